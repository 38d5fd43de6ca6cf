"""What curate reports on each kind of real-world footage, against the right value.

Builds the footage of the real-world cases (phone VFR, anamorphic DVD, rotated phone video, drone
thumbnail track, Matroska cover, edit-list trim, MPEG-TS, full-range colour, 2 fps time-lapse, black
lead-in, bracketed file names) with the ffmpeg CLI from lavfi sources, runs the decode pass (and the
mp4 clip writer, the quality stage and source listing where the case needs them) and prints, per
case, the right value and what curate measured. Run it on two checkouts to compare them:

    python bench/real_footage.py [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def main(argv=None) -> int:
    import av
    import cv2
    import numpy as np
    from footage import dim_noisy_picture, ffmpeg, remux, rotated, two_shots, vfr_video

    from curate.config import PipelineConfig
    from curate.split import split_video
    from curate.transcode import TranscodeStage
    from filters.quality import QualityStage

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="keep the footage here (default: a temporary folder)")
    args = p.parse_args(argv)
    d = args.out or tempfile.mkdtemp(prefix="curate-footage-")
    os.makedirs(d, exist_ok=True)
    j = lambda name: os.path.join(d, name)  # noqa: E731

    def split(path, **clips):
        cfg = PipelineConfig.model_validate(
            {"input": {"paths": ["x"]}, "output": {"path": "o"}, "shots": {"detector": "curate"},
             "clips": {"min_duration_s": 0.5, **clips}}
        )
        recs = list(split_video(path, path, cfg))
        return recs[:-1], recs[-1]["video"]

    def thumb(img):
        return cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (32, 24), interpolation=cv2.INTER_AREA).astype(float)

    def source_time(img, path, stream=-1):
        """Presentation time (from the first frame) of the source frame that looks most like `img`."""
        with av.open(path) as c:
            s = c.streams.video[stream]
            frames = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(s)]
        t0 = frames[0][0]
        return min(frames, key=lambda f: np.abs(thumb(cv2.resize(f[1], img.shape[1::-1])) - thumb(img)).mean())[0] - t0

    def clip_file(clip):
        row = TranscodeStage(output=j("out")).process_batch([dict(clip)])[0]
        with av.open(row["path"]) as c:
            return row, [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]

    rows: list[tuple[str, str, str, str]] = []

    def case(name, what, right, measure):
        try:
            got = measure()
        except Exception as e:  # a case that breaks is a finding, not the end of the table
            got = f"{type(e).__name__}: {str(e).splitlines()[0][:70]}"
            if os.environ.get("CURATE_BENCH_DEBUG"):
                traceback.print_exc()
        rows.append((name, what, right, str(got)))
        print(f"{name:<28} {what:<36} {right:<42} {got}", flush=True)

    print(f"{'case':<28} {'quantity':<36} {'right':<42} measured")
    fmt = lambda xs: "(" + ", ".join(f"{x:.2f}" for x in xs) + ")"  # noqa: E731

    vfr = vfr_video(j("vfr.mp4"))
    case("VFR 10->30 fps", "clip times (s)", "(0.00, 3.00) (3.00, 6.00)",
         lambda: " ".join(fmt((c["start_s"], c["end_s"])) for c in split(vfr)[0]))
    case("VFR 10->30 fps", "videos fps / vfr", "20.0 (average) / True",
         lambda: f"{split(vfr)[1]['fps']:.2f} / {split(vfr)[1].get('vfr')}")

    def vfr_clip2():
        clips, _ = split(vfr)
        row, frames = clip_file(clips[1])
        first = source_time(frames[0], vfr)
        in_a = sum(source_time(f, vfr) < 3.0 - 1e-3 for f in frames)
        return f"starts at {first:.2f} s, {len(frames)} frames, {in_a} of shot A"

    case("VFR 10->30 fps, mp4 mode", "clip 2 file", "starts at 3.00 s, 90 frames, 0 of shot A", vfr_clip2)
    vfr_mkv = remux(vfr, j("vfr.mkv"))
    case("VFR in Matroska", "clip times (s)", "(0.00, 3.00) (3.00, 6.00)",
         lambda: " ".join(fmt((c["start_s"], c["end_s"])) for c in split(vfr_mkv)[0]))

    sar = two_shots(j("sar.mp4"), size="720x480", rate=25, vf="setsar=32/27")

    def sar_sizes():
        clips, v = split(sar)
        fh, fw = clips[0]["frames"].shape[1:3]
        row, frames = clip_file(clips[0])
        return (f"{v['width']}x{v['height']} {v.get('aspect_ratio', v['width'] / v['height']):.3f} / "
                f"{fw / fh:.3f} / {frames[0].shape[1]}x{frames[0].shape[0]}")

    case("SAR 32:27 on 720x480", "size, DAR / stage frames / mp4 clip", "854x480 1.778 / 1.778 / 854x480", sar_sizes)

    base = two_shots(j("upright.mp4"), size="320x240", rate=25)
    rot = rotated(base, j("rot90.mp4"), 90)

    def rot_sizes():
        clips, v = split(rot)
        row, frames = clip_file(clips[0])
        return f"{v['width']}x{v['height']} / {clips[0]['frames'].shape[2]}x{clips[0]['frames'].shape[1]} / {frames[0].shape[1]}x{frames[0].shape[0]}"

    case("rotation 90 (phone)", "size / stage frames / mp4 clip", "240x320 / 240x320 / 240x320", rot_sizes)

    movie = two_shots(j("movie.mp4"), size="320x240", rate=30)
    ffmpeg("-f", "lavfi", "-i", "color=c=red:s=160x120:d=1", "-frames:v", "1", j("thumb.jpg"))
    ffmpeg("-i", j("thumb.jpg"), "-i", movie, "-map", "0", "-map", "1:v", "-c", "copy", j("drone.mp4"))
    status = lambda path: (lambda v: f"{v['status']} {v['num_frames']} frames" if v["status"] == "ok" else f"error: {v['error']}")(split(path)[1])  # noqa: E731
    case("thumbnail track first", "status", "ok 180 frames", lambda: status(j("drone.mp4")))
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=160x120:d=1", "-frames:v", "1", j("cover.png"))
    ffmpeg("-i", j("cover.png"), "-i", movie, "-map", "0", "-map", "1:v", "-c", "copy", "-disposition:v:0", "attached_pic", j("cover.mkv"))
    case("Matroska cover first", "status", "ok 180 frames", lambda: status(j("cover.mkv")))
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=320x240:r=30:d=6", "-g", "60", "-c:v", "libx264", "-preset", "ultrafast", j("six.mp4"))
    ffmpeg("-ss", "1.0", "-i", j("six.mp4"), "-c", "copy", j("trimmed.mp4"))
    case("edit list (-ss 1 -c copy)", "status", "ok 150 frames", lambda: status(j("trimmed.mp4")))
    ffmpeg("-i", movie, "-f", "lavfi", "-t", "8", "-i", "sine", "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", j("audio8.mkv"))
    case("Matroska, 8 s audio", "video duration_s", "6.00", lambda: f"{split(j('audio8.mkv'))[1]['duration_s']:.2f}")
    data = open(movie, "rb").read()
    remux(movie, j("whole.mkv"))
    with open(j("cut.mkv"), "wb") as f:
        f.write(open(j("whole.mkv"), "rb").read()[: len(data) // 2])
    case("Matroska cut in half", "status", "error: truncated", lambda: status(j("cut.mkv")))

    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=20", "-g", "250", "-c:v", "libx264", "-preset", "ultrafast", j("long.mp4"))
    ts = remux(j("long.mp4"), j("long.ts"), "-f", "mpegts")

    def ts_window():
        clips, v = split(ts, max_duration_s=2.0)
        c = clips[3]
        row, frames = clip_file(c)
        return f"starts at {source_time(frames[0], ts):.2f} s, {len(frames)} frames"

    case("MPEG-TS, window 6-8 s", "mp4 clip", "starts at 6.00 s, 50 frames", ts_window)

    def luma():
        out = []
        for full in (False, True):
            clips, _ = split(dim_noisy_picture(j(f"range{int(full)}.mp4"), full))
            out.append(QualityStage().process_batch(clips)[0]["luma_mean"])
        return f"{out[0]:.3f} / {out[1]:.3f}"

    case("limited / full range", "luma_mean", "equal within 0.01", luma)

    def scenes(path):
        return " ".join(f"[{a},{b})" for a, b in split(path)[1]["scenes"])

    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=320x240:r=2:d=4", "-f", "lavfi", "-t", "6", "-i", "mandelbrot=s=320x240:r=2",
           "-f", "lavfi", "-t", "6", "-i", "life=s=320x240:r=2:mold=10:ratio=0.5", "-filter_complex", "[0][1][2]concat=n=3:v=1",
           "-c:v", "libx264", "-preset", "ultrafast", j("timelapse.mp4"))
    case("2 fps, shots 4 s + 6 s + 6 s", "scenes (frames)", "[0,8) [8,20) [20,32)", lambda: scenes(j("timelapse.mp4")))
    ffmpeg("-f", "lavfi", "-i", "color=c=black:s=320x240:r=25:d=2", "-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=4",
           "-f", "lavfi", "-t", "3", "-i", "mandelbrot=s=320x240:r=25", "-filter_complex", "[0][1][2]concat=n=3:v=1",
           "-c:v", "libx264", "-preset", "ultrafast", j("black_lead.mp4"))
    case("black lead-in 2 s", "scenes (frames)", "[0,50) [50,150) [150,225)", lambda: scenes(j("black_lead.mp4")))

    def names():
        from curate.config import InputConfig
        from curate.sources import list_sources

        paths = []
        for n in ("a b.mp4", "clip [1].mp4", "café #2 ü.mp4", "what?.mp4"):
            shutil.copy(movie, j(n))
            paths.append(j(n))
        return f"{len(list_sources(InputConfig(paths=paths)))} sources"

    case("names with [ ] ? # spaces", "listed explicitly", "4 sources", names)
    if not args.out:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
