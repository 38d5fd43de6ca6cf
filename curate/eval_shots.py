"""`curate eval-shots`: precision, recall and F1 of shot detectors on labelled footage.

Each video is decoded once per detector and fed exactly as `curate run` feeds it (same small
frames, same online push/finish calls), so the figures are those of the pipeline.

Labels, JSON (what `curate.shot_corpus` writes; a bare {video: [transitions]} mapping works too)::

    {"videos": {"a.mp4": {"transitions": [{"kind": "cut", "frame": 87},
                                           {"kind": "dissolve", "start": 140, "end": 160}]}}}

or CSV with a header `video,kind,start,end` (a cut's `start` is its frame, `end` left empty).
A cut's frame is the first frame of the new shot; `jump` (a jump cut: the same shot, later or
earlier) and `cut-in` (the same shot framed closer or wider) are cuts too, scored by kind. A gradual
transition (dissolve, fade, wipe: any other kind) spans frames [start, end). Video names are
matched by file name.

Matching is one to one. A detected boundary matches a cut when it lies within `tolerance` frames
of it, and a gradual transition when it lies inside the transition (widened by `tolerance`).
Every other detection is a false positive; every unmatched transition a miss.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from curate.config import ShotsConfig
from curate.shots import Boundary, make_detector

CUT_KINDS = ("cut", "jump", "cut-in")  # hard transitions: one frame, the first of the new shot

# Baselines outside the pipeline: PySceneDetect's own API with its default settings and decoder.
PYSCENEDETECT = {"pyscenedetect": "AdaptiveDetector", "pyscenedetect-content": "ContentDetector"}


@dataclass(frozen=True)
class Transition:
    kind: str
    start: int
    end: int  # == start for a cut


@dataclass
class Truth:
    transitions: list[Transition]
    traps: list[Transition] = field(default_factory=list)


def load_labels(path: str | Path) -> dict[str, Truth]:
    """Labels keyed by video file name, from JSON or CSV (see the module docstring)."""
    path = Path(path)
    out: dict[str, Truth] = {}
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                t = _transition(row["kind"].strip(), int(row["start"]), row.get("end") or None)
                out.setdefault(os.path.basename(row["video"].strip()), Truth([])).transitions.append(t)
        return out
    data = json.loads(path.read_text())
    for name, entry in data.get("videos", data).items():
        if isinstance(entry, list):
            entry = {"transitions": entry}
        ts = [_transition(t["kind"], t.get("frame", t.get("start")), t.get("end")) for t in entry["transitions"]]
        traps = [Transition(t["kind"], int(t["start"]), int(t["end"])) for t in entry.get("traps", [])]
        out[os.path.basename(name)] = Truth(ts, traps)
    return out


def _transition(kind: str, start, end) -> Transition:
    start = int(start)
    if kind in CUT_KINDS:
        return Transition(kind, start, start)
    if end is None or int(end) <= start:
        raise ValueError(f"{kind} at {start}: a gradual transition needs end > start")
    return Transition(kind, start, int(end))


def _distance(b: Boundary, t: Transition) -> int:
    """Frames between a detected boundary (the span [end, start] it leaves out) and a transition."""
    return max(0, t.start - b.start, b.end - t.end)


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    found: dict[str, list[int]] = field(default_factory=dict)  # kind -> [matched, total]
    fp_in: dict[str, int] = field(default_factory=dict)  # false positives inside traps, by trap kind
    frames: int = 0
    detect_s: float = 0.0
    decode_s: float = 0.0

    def add(self, other: Score) -> None:
        self.tp, self.fp, self.fn = self.tp + other.tp, self.fp + other.fp, self.fn + other.fn
        for k, (m, n) in other.found.items():
            a = self.found.setdefault(k, [0, 0])
            a[0], a[1] = a[0] + m, a[1] + n
        for k, n in other.fp_in.items():
            self.fp_in[k] = self.fp_in.get(k, 0) + n
        self.frames += other.frames
        self.detect_s += other.detect_s
        self.decode_s += other.decode_s

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def match(detected: list[Boundary], truth: Truth, tolerance: int = 2) -> Score:
    """Greedy one-to-one matching, closest pairs first."""
    pairs = sorted(
        (d, i, j)
        for i, b in enumerate(detected)
        for j, t in enumerate(truth.transitions)
        if (d := _distance(b, t)) <= tolerance
    )
    used_b, used_t = set(), set()
    for _, i, j in pairs:
        if i not in used_b and j not in used_t:
            used_b.add(i)
            used_t.add(j)
    s = Score(tp=len(used_t), fp=len(detected) - len(used_b), fn=len(truth.transitions) - len(used_t))
    for j, t in enumerate(truth.transitions):
        a = s.found.setdefault(t.kind, [0, 0])
        a[0] += j in used_t
        a[1] += 1
    for i, b in enumerate(detected):
        if i in used_b:
            continue
        for trap in truth.traps:
            if trap.start <= b.start < trap.end or trap.start < b.end <= trap.end:
                s.fp_in[trap.kind] = s.fp_in.get(trap.kind, 0) + 1
                break
    return s


def detect_file(path: str, cfg: ShotsConfig, weights_path: str | None = None) -> tuple[list[Boundary], int, float, float]:
    """Boundaries the pipeline's detector reports for a file, its frame count, and the seconds spent
    decoding (with the frame conversion the detector needs) and in the detector itself."""
    from curate.split import detect_size, detector_input
    from curate.video import open_video

    out: list[Boundary] = []
    decode_s = detect_s = 0.0
    index = 0
    container, stream = open_video(path)  # the movie stream, as the pipeline picks it
    with container:
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        detector = make_detector(cfg, float(rate), weights_path)
        size = None
        frames = container.decode(stream)
        while True:
            t0 = time.perf_counter()
            frame = next(frames, None)
            if frame is None:
                decode_s += time.perf_counter() - t0
                break
            if size is None:
                size = detect_size(frame, cfg.detect_width)
            small = detector_input(detector.input_kind, detector.input_size, frame, size)
            t1 = time.perf_counter()
            out += detector.push(index, small)
            detect_s += time.perf_counter() - t1
            decode_s += t1 - t0
            index += 1
    t1 = time.perf_counter()
    out += detector.finish(index)
    detect_s += time.perf_counter() - t1
    return out, index, decode_s, detect_s


def detect_pyscenedetect(path: str, kind: str) -> tuple[list[Boundary], int, float, float]:
    """PySceneDetect as its users run it: `detect(path, AdaptiveDetector())`, its own decoder, all defaults."""
    import scenedetect

    t0 = time.perf_counter()
    video = scenedetect.open_video(path)
    manager = scenedetect.SceneManager()
    manager.add_detector(getattr(scenedetect, PYSCENEDETECT[kind])())
    manager.detect_scenes(video)
    scenes = manager.get_scene_list()
    cuts = [s[0].frame_num for s in scenes[1:]]
    return [Boundary(c, c) for c in cuts], video.frame_number, 0.0, time.perf_counter() - t0


def evaluate(
    videos: dict[str, str],
    labels: dict[str, Truth],
    detector: str,
    cfg: ShotsConfig | None = None,
    tolerance: int = 2,
    per_video: dict | None = None,
) -> Score:
    """Score one detector over videos {name: path} that have labels."""
    total = Score()
    base = cfg or ShotsConfig()
    for name, path in sorted(videos.items()):
        if detector in PYSCENEDETECT:
            found, n, dec, det = detect_pyscenedetect(path, detector)
        else:
            found, n, dec, det = detect_file(path, base.model_copy(update={"detector": detector}))
        s = match(found, labels[name], tolerance)
        s.frames, s.decode_s, s.detect_s = n, dec, det
        if per_video is not None:
            per_video[name] = {"detected": [[b.end, b.start] for b in found], "tp": s.tp, "fp": s.fp, "fn": s.fn}
        total.add(s)
    return total


def find_videos(spec: str, labels: dict[str, Truth]) -> dict[str, str]:
    """Labelled videos under a directory or matching a glob, by file name."""
    paths = glob.glob(os.path.join(spec, "*")) if os.path.isdir(spec) else glob.glob(spec)
    return {os.path.basename(p): p for p in sorted(paths) if os.path.basename(p) in labels}


def format_row(name: str, s: Score) -> str:
    kinds = " ".join(f"{k} {m}/{n}" for k, (m, n) in sorted(s.found.items()))
    traps = " ".join(f"{k} {n}" for k, n in sorted(s.fp_in.items())) or "-"
    speed = s.frames / s.detect_s if s.detect_s else float("nan")
    dec = f"{s.frames / s.decode_s:7.0f}" if s.decode_s else "      -"
    return (
        f"{name:<30} {s.precision:6.3f} {s.recall:6.3f} {s.f1:6.3f} {s.tp:4d} {s.fp:4d} {s.fn:4d}"
        f" {speed:8.0f} {dec}  found: {kinds}  fp in traps: {traps}"
    )


HEADER = f"{'detector':<30} {'P':>6} {'R':>6} {'F1':>6} {'TP':>4} {'FP':>4} {'FN':>4} {'det f/s':>8} {'dec f/s':>7}"


def cmd_eval_shots(args) -> int:
    from curate.cli import fail

    try:
        labels = load_labels(args.labels)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        return fail(f"{args.labels}: cannot read labels ({e})")
    videos = find_videos(args.videos, labels)
    if not videos:
        return fail(f"no video under {args.videos} has labels in {args.labels}")
    missing = sorted(set(labels) - set(videos))
    if missing:
        print(f"curate: warning: {len(missing)} labelled videos not found (first: {missing[0]})", file=sys.stderr)
    cfg = ShotsConfig(detect_width=args.detect_width, min_scene_len_s=args.min_scene_len_s, threshold=args.threshold)
    detectors = [d for spec in args.detector for d in spec.split(",") if d]
    print(f"{len(videos)} videos, {sum(len(labels[v].transitions) for v in videos)} labelled transitions, tolerance {args.tolerance} frames")
    print(HEADER)
    results = {}
    for det in detectors:
        per_video: dict = {}
        s = evaluate(videos, labels, det, cfg, args.tolerance, per_video)
        print(format_row(det, s), flush=True)
        results[det] = {"precision": s.precision, "recall": s.recall, "f1": s.f1, "tp": s.tp, "fp": s.fp, "fn": s.fn,
                        "found": s.found, "fp_in_traps": s.fp_in, "frames": s.frames, "detect_s": s.detect_s,
                        "decode_s": s.decode_s, "videos": per_video}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


DETECTORS = ["curate", "adaptive", "content", "transnetv2", "stride", *PYSCENEDETECT]


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval-shots",
        help="measure shot detection (precision, recall, F1) on labelled footage",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--videos", required=True, help="directory or glob of videos")
    p.add_argument("--labels", required=True, help="labels.json or labels.csv")
    p.add_argument("--detector", action="append", default=[], metavar="NAME",
                   help=f"detector(s) to score, repeatable or comma-separated: {', '.join(DETECTORS)} (default: curate,adaptive)")
    p.add_argument("--tolerance", type=int, default=2, help="frames a cut may be off by (default 2)")
    p.add_argument("--detect-width", type=int, default=ShotsConfig().detect_width)
    p.add_argument("--min-scene-len-s", type=float, default=ShotsConfig().min_scene_len_s, help="shortest shot, seconds")
    p.add_argument("--threshold", type=float, default=None, help="detector threshold (default: each detector's own)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the figures (and per-video detections) here")
    p.set_defaults(func=_run_with_defaults)
    return p


def _run_with_defaults(args) -> int:
    args.detector = args.detector or ["curate,adaptive"]
    return cmd_eval_shots(args)
