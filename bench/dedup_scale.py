"""Semantic dedup at scale: wall time, peak RSS of the driver and of the largest Ray worker, and
growth per 10x clips, on synthetic clips manifests of 768-d CLIP-like embeddings with planted
near-duplicate groups (tests/dedup_data.py); plus the recall of the k-means method against the
exact one where exact is feasible.

Each size is generated part by part (streaming; `--rows` clips per part) under `--dir`, then
`curate dedup DIR --json ...` runs in a fresh process with its own embedded Ray (so the worker
figures are that run's), then the end-of-run steps (recover, report and card) run on it in a
fresh process, and the manifest is deleted. The driver's peak RSS is that process's
ru_maxrss; the largest worker's is the largest ru_maxrss any dedup task reported.

    python bench/dedup_scale.py --sizes 100000 1000000 5000000 --recall 100000 --scratch-gb 20
    python bench/dedup_scale.py --sizes 100000 --recall 100000 --try 250:1 --try 500:4 ...
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def _write(args) -> None:
    from dedup_data import Corpus

    from curate.storage import Store

    root, parts, rows, seed, part = args
    Corpus(parts, rows, seed=seed).write(Store(root), part)


def generate(root: str, clips: int, rows: int, seed: int, procs: int) -> float:
    t0 = time.perf_counter()
    parts = math.ceil(clips / rows)
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        for _ in pool.imap_unordered(_write, [(root, parts, rows, seed, p) for p in range(parts)]):
            pass
    return time.perf_counter() - t0


def dedup(root: str, *options: str) -> dict:
    """`curate dedup` in a fresh process; its figures plus the process's own wall time."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, "-m", "curate", "dedup", root, "--json", f.name, *options]
        t0 = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{run.stderr[-3000:]}")
        stats = json.load(open(f.name))
    stats["process_s"] = time.perf_counter() - t0
    print("  " + next(line for line in run.stdout.splitlines() if line.startswith("curate dedup: ")), flush=True)
    steps = ", ".join(f"{k} {v:.0f}s" for k, v in stats.get("steps_s", {}).items())
    print(f"  {stats.get('waves', 0)} wave(s); steps: {steps}", flush=True)
    return stats


# The steps a run takes on its whole output besides dedup, as the driver runs them: resume's
# recovery (which videos are done) at the start, and at the end the report and dataset card
# (ManifestStats streamed over every part, then rendered).
END_OF_RUN = """
import json, resource, sys, time
from curate import manifest, report
from curate.storage import Store
store = Store(sys.argv[1])
t0 = time.perf_counter()
done = len(manifest.recover(store))
t1 = time.perf_counter()
report.write_report(sys.argv[1], store=store)
t2 = time.perf_counter()
print(json.dumps({"recover_s": t1 - t0, "videos_done": done, "report_s": t2 - t1,
                  "driver_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def end_of_run(root: str) -> dict:
    """Recovery and the report on the output at `root`, in a fresh process: times and its peak RSS."""
    run = subprocess.run([sys.executable, "-c", END_OF_RUN, root], capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"end-of-run steps failed:\n{run.stderr[-3000:]}")
    stats = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"  end of run: recover {stats['recover_s']:.1f}s ({stats['videos_done']} videos done), "
          f"report and card {stats['report_s']:.1f}s, peak RSS {stats['driver_rss_mb']:.0f} MB", flush=True)
    return stats


def per_10x(a: float, b: float, n_a: int, n_b: int) -> float:
    """Growth factor of a quantity from n_a to n_b clips, as if over 10x."""
    return (b / a) ** (1 / math.log10(n_b / n_a))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000])
    ap.add_argument("--recall", type=int, default=100_000, help="size at which exact also runs (0: none)")
    ap.add_argument("--try", dest="tries", action="append", default=[], metavar="CLUSTER_SIZE:PROBES",
                    help="other k-means settings whose recall to measure there (default: 250:1, SemDeDup's one probe)")
    ap.add_argument("--rows", type=int, default=2000, help="clips per manifest part")
    ap.add_argument("--dir", default=None, help="where the manifests go (default: a temp dir); each is deleted after")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--procs", type=int, default=2, help="processes generating parts")
    ap.add_argument("--scratch-gb", default=None, help="passed to curate dedup (bounds the disk scratch takes)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    base = args.dir or tempfile.mkdtemp(prefix="dedup-bench-")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    print(f"$ python bench/dedup_scale.py {' '.join(sys.argv[1:])}", flush=True)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    results = []
    for n in sorted(set(args.sizes) | ({args.recall} if args.recall else set())):
        root = os.path.join(base, f"n{n}")
        shutil.rmtree(root, ignore_errors=True)
        gen_s = generate(root, n, args.rows, args.seed, args.procs)
        print(f"{n} clips: generated in {gen_s:.0f}s, load average {os.getloadavg()[0]:.1f}", flush=True)
        common = ["--scratch-gb", args.scratch_gb] if args.scratch_gb else []
        row = {"clips": n, "generate_s": gen_s, "kmeans": dedup(root, *common), "end": end_of_run(root)}
        if n == args.recall:
            exact = row["exact"] = dedup(root, "--method", "exact", *common)
            for setting in ["default"] + (args.tries or ["250:1"]):
                stats = row["kmeans"]
                if setting != "default":
                    size, probes = setting.split(":")
                    stats = row[setting] = dedup(root, "--cluster-size", size, "--probes", probes, *common)
                print(
                    f"  {setting}: recall {stats['pairs'] / exact['pairs']:.4f} of exact's {exact['pairs']} pairs, "
                    f"{stats['compared'] / stats['candidates']:.0f} pairs compared and {stats['copies'] / stats['candidates']:.2f} "
                    f"scratch copies per clip, {stats['wall_s']:.0f}s (exact {exact['wall_s']:.0f}s)",
                    flush=True,
                )
        row["load_end"] = os.getloadavg()[0]
        results.append(row)
        shutil.rmtree(root, ignore_errors=True)

    measured = [r for r in results if r["clips"] in args.sizes]
    print("\n| clips | dedup wall s | pairs compared / clip | dedup driver peak RSS MB | largest worker MB "
          "| recover s | report s | end-of-run peak RSS MB | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in measured:
        k, e = r["kmeans"], r["end"]
        print(f"| {r['clips']:,} | {k['wall_s']:.0f} | {k['compared'] / k['candidates']:.0f} | {k['driver_rss_mb']:.0f} "
              f"| {k['worker_rss_mb']:.0f} | {e['recover_s']:.1f} | {e['report_s']:.1f} | {e['driver_rss_mb']:.0f} | {r['load_end']:.1f} |")
    for a, b in zip(measured, measured[1:]):
        ka, kb, ea, eb = a["kmeans"], b["kmeans"], a["end"], b["end"]
        grow = lambda x, y: per_10x(x, y, a["clips"], b["clips"])  # noqa: E731
        print(
            f"{a['clips']:,} -> {b['clips']:,}: dedup time x{kb['wall_s'] / ka['wall_s']:.2f} "
            f"({grow(ka['wall_s'], kb['wall_s']):.1f}x per 10x clips), "
            f"driver RSS x{kb['driver_rss_mb'] / ka['driver_rss_mb']:.2f}, largest worker x{kb['worker_rss_mb'] / ka['worker_rss_mb']:.2f}; "
            f"end of run time x{(eb['recover_s'] + eb['report_s']) / (ea['recover_s'] + ea['report_s']):.2f} "
            f"({grow(ea['recover_s'] + ea['report_s'], eb['recover_s'] + eb['report_s']):.1f}x per 10x), "
            f"its RSS x{eb['driver_rss_mb'] / ea['driver_rss_mb']:.2f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
