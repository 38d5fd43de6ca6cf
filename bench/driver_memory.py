"""Driver memory against the number of videos: manifest rows are written by the workers, the driver
holds counts and a page of source URIs, so its memory should not grow with the run.

Runs the split-only pipeline in this process on N hard links of one short generated video (each a
distinct source, several clips each) for each N given, on one embedded Ray, and reports the
driver's peak RSS growth during each run (sampled every 50 ms by a thread) against the videos,
clips and wall time. Workers are separate processes and not counted.

    python bench/driver_memory.py [--videos 300 3000] [--page-size 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


class Peak:
    """The highest RSS seen while the block runs, sampled by a thread."""

    def __enter__(self):
        self.peak, self.stop = rss_mb(), threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def main(argv=None) -> int:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    from footage import cut_video

    from curate.config import PipelineConfig
    from curate.engine import init_ray, run_pipeline

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, nargs="+", default=[300, 3000])
    p.add_argument("--page-size", type=int, default=1000)
    args = p.parse_args(argv)
    print(f"command: python bench/driver_memory.py --videos {' '.join(map(str, args.videos))} --page-size {args.page_size}")
    with tempfile.TemporaryDirectory(prefix="curate-drvmem-") as tmp:
        base = os.path.join(tmp, "base.mp4")
        cut_video(base, [12, 12, 12], w=64, h=48)  # 1.44 s, three shots
        rows = []
        for n in args.videos:
            src = os.path.join(tmp, f"src{n}")
            os.makedirs(src)
            for i in range(n):
                os.link(base, os.path.join(src, f"v{i:07d}.mp4"))
            cfg = PipelineConfig.model_validate({
                "input": {"paths": [src], "page_size": args.page_size},
                "output": {"path": os.path.join(tmp, f"out{n}"), "videos_per_part": 64},
                "shots": {"detector": "stride", "stride_s": 0.48}, "clips": {"min_duration_s": 0.2},
                "ray": {"object_store_memory": 300_000_000},
            })
            if not rows:  # Ray's own start-up is not the run's
                init_ray(cfg, None, [])
            before = rss_mb()
            t0 = time.perf_counter()
            with Peak() as peak:
                summary = run_pipeline(cfg, echo=lambda *_: None)
            rows.append((n, summary.clips, time.perf_counter() - t0, before, peak.peak))
            print(f"{n:>7} videos {summary.clips:>8} clips  {rows[-1][2]:7.1f} s  driver RSS before {before:6.0f} MB, "
                  f"peak {peak.peak:6.0f} MB (+{peak.peak - before:5.0f} MB)", flush=True)
    (n0, c0, _, b0, p0), (n1, c1, _, b1, p1) = rows[0], rows[-1]
    print(f"growth from {n0} to {n1} videos ({c1 / max(c0, 1):.0f}x clips): peak RSS {p1 / p0:.2f}x, "
          f"run's own growth {p0 - b0:.0f} MB -> {p1 - b1:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
