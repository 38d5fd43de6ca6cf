"""Runs a pipeline on Ray Data: sources -> split (decode once, detect, shape) -> stages -> manifests.

Ray Data does the scheduling, streaming and backpressure; this module only wires stages into
`map_batches` (model stages as actor pools, pixel stages in the decode tasks or as tasks:
`operator_stages`) and commits finished videos on the driver. Records that are video-only (no
clip) or not eligible for a kept-only stage pass around `process_batch` untouched.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from functools import cache, partial
from itertools import islice

import pyarrow as pa

from curate import manifest
from curate.config import STAGE_CLASSES, ConfigError, PipelineConfig, stage_class
from curate.models import ModelRef, fetch
from curate.record import (
    ERRORS_FIELD,
    SAMPLED_FRAMES,
    TRANSIENT_NAMES,
    clip_schema,
    from_table,
    to_table,
    video_id_for,
)
from curate.shots import resolve_detector_kind, transnetv2_ref
from curate.progress import Progress
from curate.sink import Committer, FragmentTarget
from curate.sources import check_sources, iter_sources
from curate.stage import GlobalStage, Stage
from curate.storage import SourceUnreadable, Store, local_copy

log = logging.getLogger("curate")

# On a failed video's record: whether the failure may pass on a rerun (manifest.VIDEOS_SCHEMA).
RETRYABLE_FIELD = pa.field("retryable", pa.bool_())
# Transient columns the driver needs besides the manifest's (the last operator drops all others).
TO_DRIVER = {"video", "emitted_clips", "busy", "retryable"}
# Transient columns every stage sees (they are small); the rest only reach stages that read them.
PASSTHROUGH = TO_DRIVER | {"frame_indices", "frame_times", "motion_frame_indices", "motion_frame_times"}
DECODE_MEMORY_BYTES = 512 * 1024**2


def pipeline_stages(cfg: PipelineConfig) -> list[Stage]:
    """Configured stages plus the filter (when there are rules; without any it would keep every
    clip) and the clip writer (mp4 mode), in order."""
    from filters.filter import FilterStage

    stages = cfg.build_stages()
    rules = list(cfg.filter.rules)
    for s in stages:
        if s.mode == "filter":
            rules += s.filter_rules()
    if rules:
        stages.append(FilterStage(rules=rules))
    if cfg.clips.mode == "mp4":
        from curate.transcode import TranscodeStage

        stages.append(
            TranscodeStage(
                output=cfg.output.path,
                output_s3=cfg.output.s3,
                input_s3=cfg.input.s3,
                fps=cfg.clips.fps,
                short_side=cfg.clips.short_side,
                crf=cfg.clips.crf,
                preset=cfg.clips.preset,
            )
        )
    return sorted(stages, key=lambda s: s.order)


def model_refs(cfg: PipelineConfig, stages: list[Stage]) -> list[ModelRef]:
    """Every model the run may need (`detector: auto` runs TransNetV2 where the cluster has GPUs)."""
    refs = [r for s in stages for r in s.models()]
    if cfg.shots.detector in ("auto", "transnetv2"):
        refs.insert(0, transnetv2_ref(cfg.shots))
    return refs


def manifest_schema(stages: list[Stage], transient: bool) -> pa.Schema:
    fields = [ERRORS_FIELD] + [f for s in stages for f in s.outputs()]
    schema = clip_schema(fields, transient=transient)
    return schema.append(RETRYABLE_FIELD) if transient else schema


def driver_schema(stages: list[Stage]) -> pa.Schema:
    """What the last operator sends the driver: the manifest's columns and TO_DRIVER."""
    full = manifest_schema(stages, transient=True)
    keep = set(manifest_schema(stages, transient=False).names) | TO_DRIVER
    return pa.schema([f for f in full if f.name in keep])


def _busy(stage: str, seconds: float, frames: int) -> list[dict]:
    return [{"stage": stage, "seconds": seconds, "frames": frames}]


# ---------------------------------------------------------------- worker side


def hold_to_cpus(num_cpus: float) -> None:
    """Keep OpenCV's thread pool within the CPUs Ray gave this task or actor. OpenCV otherwise starts
    a thread per core in every worker; with every core already running a worker, those threads only
    fight each other (the motion stage's DIS flow: 6.6 CPU s with them, 4.0 without, for the same
    wall time on 2 cores)."""
    import cv2

    cv2.setNumThreads(max(1, int(num_cpus)))


def _decode_segment(*spec):
    from curate.split import decode_segment

    hold_to_cpus(1)
    return decode_segment(*spec)


@cache
def _segment_task():
    import ray

    return ray.remote(num_cpus=1, max_retries=0)(_decode_segment)


# Segments of a long video decoded ahead of the one being merged: each result holds its sampled
# frames (about 3 a second at `frames.size`, 1 MB each at 448 px: 100 MB for 30 s), so this bounds
# what waits in the object store. One, not two: Ray Data does not see segment tasks, and with three
# of them holding the logical CPUs the scoring stages waited until decoding ended (quickstart bench
# on 2 CPUs: 21.5 s a run against 23.9, bench/README.md).
SEGMENTS_AHEAD = 1


def run_segments_on_ray(specs):
    """A long video's segments (`curate.split.decode_segment` arguments) as Ray tasks on this node
    (where the local copy is), SEGMENTS_AHEAD of them decoding ahead of the one being merged; their
    results in order. The task waiting on them gives its CPU back to Ray meanwhile."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    task = _segment_task().options(scheduling_strategy=here)
    specs = iter(specs)
    pending = [task.remote(*spec) for spec in islice(specs, SEGMENTS_AHEAD + 1)]
    try:
        while pending:
            ref = pending.pop(0)
            pending += [task.remote(*spec) for spec in islice(specs, 1)]
            yield ray.get(ref)
            del ref  # its result goes as soon as the caller drops it
    finally:
        for ref in pending:  # a failed or abandoned video: the rest are not needed
            ray.cancel(ref)


def split_batch(batch: pa.Table, cfg: PipelineConfig, schema: pa.Schema, weights: str | None, sink: FragmentTarget | None = None,
                samples: frozenset[str] = SAMPLED_FRAMES, stages: tuple[Stage, ...] = ()):
    """Ray Data UDF: one source row in, a stream of record tables (of `schema`) out; when split is
    the run's last operator (`sink`), the video's rows are written as one fragment and its report
    comes out instead. `samples`: the sampled frames the stages read; `stages`: the pixel stages
    this task runs on its clip records before they leave it (`operator_stages`).

    A failure to read the source (I/O, S3, timeouts) is marked retryable; what the splitter says
    about the media itself (not a video, truncated, ...) and a source that is not a regular file
    are not."""
    from curate.split import split_video, video_record

    hold_to_cpus(1)
    runner = _runner(stages, schema) if stages else None
    for uri in batch.column("source_uri").to_pylist():
        t0 = time.perf_counter()
        rows: list[dict] = []
        sent = 0
        staged_s = 0.0  # in `stages`, counted as theirs
        try:
            with local_copy(uri, cfg.input.s3) as path:
                for rec in split_video(uri, path, cfg, weights, samples, run_segments_on_ray):
                    if rec["clip_id"] is None:
                        rec["busy"] = _busy("split", time.perf_counter() - t0 - staged_s, rec["video"].get("num_frames") or 0)
                        rec["retryable"] = False
                    elif runner is not None:
                        t1 = time.perf_counter()
                        rec = runner.apply([rec])[0]
                        staged_s += time.perf_counter() - t1
                    rows.append(rec)
                    if sink is None and len(rows) >= 4:
                        yield to_table(rows, schema)
                        sent += sum(1 for r in rows if r["clip_id"] is not None)
                        rows = []
        except Exception as e:  # a download or I/O failure is still only this video's failure
            rows = [video_record(video_id_for(uri), uri, None, f"{type(e).__name__}: {e}", [], 0, sent)]
            rows[0]["busy"] = _busy("split", time.perf_counter() - t0, 0)
            rows[0]["retryable"] = not isinstance(e, SourceUnreadable)
        if sink is not None:
            yield sink.write(to_table(rows, schema))
        elif rows:
            yield to_table(rows, schema)


class StageRunner:
    """Adapts a chain of stages (one Ray Data operator, `operator_stages`) to Ray Data: unpacks
    arrays, routes eligible records through each stage's process_batch in turn, and when a batch
    fails, runs its clips one by one so that only a clip that fails on its own carries the error
    (`errors`: "stage: Type: message"; never swallowed, never fatal)."""

    def __init__(self, stages: list[Stage], schema: pa.Schema, sink: FragmentTarget | None = None):
        self.stages = list(stages)
        self.schema = schema  # of the output: the fragments' when this is the last operator
        self.sink = sink  # the last operator writes its output as a fragment and returns the report
        self.reads = read_by(self.stages)
        hold_to_cpus(self.stages[0].num_cpus)
        for stage in self.stages:
            stage.setup()

    def __call__(self, table: pa.Table) -> pa.Table:
        # Transient columns no stage here reads skip the round trip through Python objects and are
        # re-attached unchanged when the output has them.
        untouched = [c for c in TRANSIENT_NAMES - PASSTHROUGH if c in table.column_names and c not in self.reads]
        rows = self.apply(from_table(table.drop_columns(untouched)))
        attach = [c for c in untouched if c in self.schema.names]
        out = to_table(rows, pa.schema([f for f in self.schema if f.name not in attach]))
        for c in attach:
            out = out.append_column(self.schema.field(c), table.column(c))
        out = out.select(self.schema.names)
        return self.sink.write(out) if self.sink is not None else out

    def apply(self, rows: list[dict]) -> list[dict]:
        """`rows` through every stage, in order (video-only rows, and clips a kept-only stage does
        not take, pass untouched); each stage's time is added to the clips' `busy`."""
        rows = list(rows)
        for stage in self.stages:
            idx = [i for i, r in enumerate(rows) if r["clip_id"] is not None and (not stage.kept_only or r.get("kept", True))]
            if not idx:
                continue
            t0 = time.perf_counter()
            batch = [rows[i] for i in idx]
            try:
                out = self._process(stage, batch)
            except Exception as e:
                if len(batch) == 1:
                    out = [self._failed(stage, batch[0], e)]
                else:
                    log.warning("stage %s failed on a batch of %d, retrying its clips one by one: %s", stage.name, len(batch), e)
                    out = [self._one(stage, r) for r in batch]
            share = (time.perf_counter() - t0) / len(idx)
            for i, r in zip(idx, out):
                r["busy"] = list(r.get("busy") or []) + _busy(stage.name, share, len(r.get("frame_indices") or []))
                rows[i] = r
        return rows

    @staticmethod
    def _process(stage: Stage, batch: list[dict]) -> list[dict]:
        # Shallow copies: a stage that fails midway may have updated some records in place, and
        # the one-by-one retry must see them as they came.
        out = stage.process_batch([dict(r) for r in batch])
        if len(out) != len(batch):
            raise RuntimeError(f"returned {len(out)} records for {len(batch)}")
        return out

    @staticmethod
    def _one(stage: Stage, rec: dict) -> dict:
        try:
            return StageRunner._process(stage, [rec])[0]
        except Exception as e:
            return StageRunner._failed(stage, rec, e)

    @staticmethod
    def _failed(stage: Stage, rec: dict, e: Exception) -> dict:
        log.warning("stage %s failed on clip %s: %s\n%s", stage.name, rec["clip_id"], e, traceback.format_exc())
        return {**rec, "errors": list(rec.get("errors") or []) + [f"{stage.name}: {type(e).__name__}: {e}"]}


_TASK_RUNNERS: dict[str, StageRunner] = {}


def _runner(stages, schema: pa.Schema, sink: FragmentTarget | None = None) -> StageRunner:
    """One StageRunner (and one setup() per stage) per worker process and chain, reused across tasks."""
    key = f"{[(s.name, s.model_dump_json()) for s in stages]}:{schema.names}:{sink}"
    runner = _TASK_RUNNERS.get(key)
    if runner is None:
        runner = _TASK_RUNNERS[key] = StageRunner(stages, schema, sink)
    return runner


def run_stage_task(table: pa.Table, stages: tuple[Stage, ...], schema: pa.Schema, sink: FragmentTarget | None = None) -> pa.Table:
    """Task-mode entry for an operator of stages (`operator_stages`)."""
    return _runner(stages, schema, sink)(table)


# ---------------------------------------------------------------- driver side


@dataclass
class RunSummary:
    """What a run did (`inputs`, `skipped_done`, `retried`, `wall_s`, `ray_start_s`: this run) and
    what the whole output holds (counts, errors, filter reasons: read from the manifests;
    `detector`, `stages`, `runs`: merged over every run that wrote it). Saved as summary.json."""

    inputs: int = 0
    skipped_done: int = 0
    retried: int = 0
    videos_ok: int = 0
    videos_error: int = 0
    errors: dict[str, str] = field(default_factory=dict)  # the first report.ERRORS_LISTED failed videos: uri -> reason
    clips: int = 0
    clips_kept: int = 0
    clips_filtered: int = 0
    filter_reasons: dict[str, int] = field(default_factory=dict)
    clip_errors: int = 0
    wall_s: float = 0.0
    ray_start_s: float = 0.0
    detector: str | None = None  # the shot detectors that ran (`auto` resolved), comma-separated
    stages: dict[str, dict] = field(default_factory=dict)
    runs: int = 1
    rules: list[str] = field(default_factory=list)  # the filter rules of the last run
    # The models that made the output (every run's): stage, name, source, licence (None: not recorded).
    models: list[dict] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0: everything processed; 3: some videos or clips failed (error rows, redone next run)."""
        return 3 if self.videos_error or self.clip_errors else 0


def init_ray(cfg: PipelineConfig, address: str | None, stages: list[Stage], log_to_driver: bool = True):
    """Ray for a pipeline run: `address` or `ray.address`, else the embedded Ray (connect_ray) with
    `ray.num_cpus` and `ray.object_store_memory`. `log_to_driver`: forward the workers' output here."""
    # Model actors hold their logical CPUs for the whole run but sit idle between batches, so they
    # are counted on top of the machine's cores: decoding and pixel stages still get one task per core.
    actor_cpus = sum(s.num_cpus * s.pool_size for s in stages if s.uses_actors)
    # Stages with task operators of their own (operator_stages: the clip writer, pixel stages after a
    # model stage) run beside decoding. A long video's segment tasks, which Ray Data does not see,
    # take every CPU it counts as free for them, and their clips would wait until decoding ends: one
    # more logical CPU keeps them running (the quickstart bench on 2 cores, when quality and motion
    # were such tasks: first runs 22.4-24.2 s against 25.1-26.2 s, alternating; bench/README.md).
    _, operators = operator_stages(flowing_stages(stages))
    task_stage = any(not op[0].uses_actors for op in operators)
    num_cpus = cfg.ray.num_cpus or (os.cpu_count() or 1) + math.ceil(actor_cpus) + int(task_stage)
    return connect_ray(address or cfg.ray.address, num_cpus, cfg.ray.object_store_memory, log_to_driver)


def connect_ray(address: str | None, num_cpus: int | None = None, object_store_memory: int | None = None,
                log_to_driver: bool = True):
    """The `ray` module, initialised: joined to the cluster at `address` (or RAY_ADDRESS), else an
    embedded local Ray with every listener on 127.0.0.1, `num_cpus` (default: the machine's) and an
    object store of `object_store_memory` bytes (default: Ray's). A Ray already initialised in this
    process is used as it is."""
    import ray

    if ray.is_initialized():
        return ray
    # A driver that `ray job submit` started finds its cluster in RAY_ADDRESS.
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
        return ray
    # Embedded local Ray: loopback only, bounded object store. Ray reads this switch once, when it is
    # imported, and without it rewrites 127.0.0.1 to the machine's address and binds its servers on
    # every interface: set it for the processes Ray starts and for this already-imported one.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(
        num_cpus=num_cpus or os.cpu_count() or 1,
        object_store_memory=object_store_memory,
        include_dashboard=False,
        configure_logging=True,
        logging_level=logging.WARNING,
        log_to_driver=log_to_driver,
        # Ray kills a worker idle for 1 s once there are more than its CPUs, and a run's phases
        # (decode segments, then stage tasks) then start new ones, each importing Ray Data and curate
        # again (about 2 CPU s): 2-5 worker starts a quickstart run with Ray's default, 1 (the text
        # actor) with a minute (bench/README.md, "Quickstart pipeline throughput").
        _system_config={"idle_worker_killing_time_threshold_ms": 60_000},
    )
    return ray


def _dataset(ray, cfg: PipelineConfig, stages: list[Stage], flowing: list[Stage], pending: list[str], weights: dict, committer: Committer):
    """The Ray Data pipeline for a page of sources: split, then each flowing stage; the last
    operator writes its output as fragments and emits their reports (curate.sink)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = False
    ctx.target_max_block_size = cfg.ray.block_mb * 1024**2
    ctx.enable_progress_bars = False  # curate.progress shows the run
    # Ray Data's per-operator resource allocator protects downstream stages' share of CPUs and of the
    # object store. With no stage after decoding (the decode tasks write their rows and return a
    # report of a few hundred bytes) there is nothing to protect, and it costs: its budget is zero for
    # the first second of every execution (Ray 2.60 refreshes the cluster's limits once a second,
    # and the first answer is empty) and on short videos it keeps about one decode task running at
    # a time (400 tasks of 50 ms on 2 CPUs: 20 s with it, 12 s without). Without it, a cap of four
    # decode tasks a CPU keeps every CPU fed and bounds what the driver tracks (every task of the
    # page in flight at once grew it by 80 KB a task).
    ctx.op_resource_reservation_enabled = bool(flowing)
    split_concurrency = cfg.ray.split_concurrency
    if split_concurrency is None and not flowing:
        split_concurrency = 4 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    if split_concurrency is not None:
        split_concurrency = min(split_concurrency, len(pending))  # more than the page's videos: Ray Data warns
    gpus = _gpu_count(ray)
    transnet_weights = weights.get(transnetv2_ref(cfg.shots).name) if cfg.shots.detector == "transnetv2" else None
    sink = committer.target(driver_schema(stages).names)
    full_schema = manifest_schema(stages, transient=True)
    in_decode, operators = operator_stages(flowing)
    # Each operator's output schema; the last one writes the fragments' (transient columns dropped).
    schemas = [carried(full_schema, sum(operators[k:], [])) for k in range(len(operators))] + [driver_schema(stages)]
    sinks = [None] * len(operators) + [sink]
    ds = ray.data.from_items([{"source_uri": u} for u in pending], override_num_blocks=len(pending))
    ds = ds.map_batches(
        partial(split_batch, cfg=cfg, schema=schemas[0], weights=transnet_weights, sink=sinks[0], samples=frames_read(flowing),
                stages=tuple(in_decode)),
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=1,
        # The decode pass's own memory (bounded, see bench/memory.py). Declaring it also keeps Ray
        # Data from fusing decoding into a stage's actors (which would cap decoding at the pool
        # size) or into task stages (which would bundle `batch_size` videos into one task).
        memory=DECODE_MEMORY_BYTES,
        compute=ray.data.TaskPoolStrategy(size=split_concurrency),
    )
    for op, schema, op_sink in zip(operators, schemas[1:], sinks[1:]):
        stage = op[0]  # the operator's resources are its first stage's (the others are light)
        num_gpus = stage.num_gpus if stage.num_gpus is not None else (
            stage.gpu_fraction if (stage.uses_gpu and gpus) else 0
        )
        common = dict(batch_size=stage.batch_size, batch_format="pyarrow", num_cpus=stage.num_cpus, num_gpus=num_gpus)
        if stage.uses_actors:
            ds = ds.map_batches(
                StageRunner,
                fn_constructor_kwargs={"stages": op, "schema": schema, "sink": op_sink},
                compute=ray.data.ActorPoolStrategy(size=stage.pool_size),
                # Declared memory also keeps Ray Data from fusing pixel tasks into model actors.
                memory=(stage.memory_mb or stage.default_memory_mb) * 1024**2,
                **common,
            )
        else:
            ds = ds.map_batches(partial(run_stage_task, stages=tuple(op), schema=schema, sink=op_sink), **common)
    return ds


def flowing_stages(stages: list[Stage]) -> list[Stage]:
    """The stages clip records flow through (all but those run once over the whole manifest)."""
    return [s for s in stages if not isinstance(s, GlobalStage)]


def operator_stages(flowing: list[Stage]) -> tuple[list[Stage], list[list[Stage]]]:
    """How the flowing stages map onto Ray Data operators: (the stages the decode tasks run on their
    own clip records, then the stages of each operator after decoding, in order).

    Pixel stages at the head of the order (no model, no GPU, on every clip, one CPU) run in the
    decode task, where the frames already are: an operator of their own would take every sampled
    frame through the object store and Arrow once more, plus a task and a worker hop per block. A
    light stage (`Stage.light`: the filter) runs in the operator before it. Every other stage is an
    operator of its own: a model stage's actor pool, or tasks (the clip writer) that spread over
    the cluster on their own. Quickstart bench on 2 CPUs: bench/README.md, "Quickstart pipeline
    throughput"."""
    in_decode: list[Stage] = []
    operators: list[list[Stage]] = []
    for stage in flowing:
        pixel = not (stage.uses_actors or stage.uses_gpu or stage.num_gpus or stage.kept_only) and stage.num_cpus <= 1
        if stage.light or (pixel and not operators):
            (operators[-1] if operators else in_decode).append(stage)
        else:
            operators.append([stage])
    return in_decode, operators


def carried(schema: pa.Schema, later: list[Stage]) -> pa.Schema:
    """`schema` less the transient columns that no stage in `later` reads (PASSTHROUGH stays): sampled
    frames stop at the last stage that reads them instead of riding every later hop to the driver."""
    read = read_by(later)
    return pa.schema([f for f in schema if f.name not in TRANSIENT_NAMES or f.name in PASSTHROUGH or f.name in read])


def _global_stage_outputs() -> list[pa.Field]:
    """The clips columns the global stages (those run on a finished output) add to every part.
    Imports every stage's module: called only when an output holds columns this run does not write."""
    return [f for name in STAGE_CLASSES if issubclass(cls := stage_class(name), GlobalStage) for f in cls().outputs()]


def frames_read(stages: list[Stage]) -> frozenset[str]:
    """The sampled frames (SAMPLED_FRAMES) some stage reads: the decode pass converts and keeps only
    those (a decode-only run none, a motion-only one the small grey frames)."""
    return SAMPLED_FRAMES & read_by(stages)


def read_by(stages: list[Stage]) -> frozenset[str]:
    """The transient columns some stage in `stages` reads (or writes, `Stage.reads`)."""
    return frozenset().union(*(s.reads for s in stages))


def longest_first(uris: list[str]) -> list[str]:
    """Local sources largest file first (S3 and other remote ones after them, in their order).

    Decode tasks take videos in this order, so a long video starts while short ones are left to fill
    the other workers, instead of starting last and running alone at the end of the page: longest
    processing time first, the classic greedy schedule (Graham 1969), here by file size."""

    def size(uri: str) -> int:
        try:
            return os.path.getsize(uri)
        except OSError:  # not a local file (s3://...)
            return -1

    return sorted(uris, key=size, reverse=True)


def _gpu_count(ray) -> float:
    try:
        return float(ray.cluster_resources().get("GPU", 0))
    except Exception:
        return 0.0


def run_pipeline(
    cfg: PipelineConfig,
    address: str | None = None,
    echo=print,
    retry_failed: bool = True,
    force: bool = False,
    lease_ttl_s: float = manifest.LEASE_TTL_S,
    progress: Progress | None = None,
    verbose: bool = True,
    allow_schema_change: bool = False,
) -> RunSummary:
    """Run a pipeline into `cfg.output.path`, resuming whatever is already there.

    Before any work (and before Ray starts): models resolved, sources listed, the output checked
    and its lease taken (ConfigError, ModelNotFound, LeaseHeld). `retry_failed` redoes videos that
    failed for a reason that may pass and videos with a failed clip; `force` takes over the lease of
    a run that still looks alive. An output whose parts have other columns than this run writes is
    refused (SchemaChanged) unless `allow_schema_change`, which rewrites them to the union. Mid-run,
    LeaseLost, S3Unavailable or an OSError (disk full) stop the run with nothing half-written; a
    rerun resumes. `progress` shows the run as it goes (default: a plain line per event through
    `echo`); without `verbose`, workers' output stays in Ray's log files instead of being forwarded
    to this process."""
    t_start = time.perf_counter()
    stages = pipeline_stages(cfg)
    # Every model is found (or downloaded) before any work: a missing one fails here, not midway.
    weights = {r.name: fetch(r) for r in model_refs(cfg, stages)}

    store = Store(cfg.output.path, cfg.output.s3)
    check_sources(cfg.input)
    store.prepare()
    lease = manifest.Lease(store, ttl_s=lease_ttl_s, force=force)
    try:
        lease.acquire()
    except OSError as e:  # read-only place, full disk, no permission
        raise ConfigError(f"output.path: cannot write to '{store.root}' ({e.strerror or e})") from None
    try:
        return _run(cfg, address, echo, retry_failed, stages, weights, store, lease, t_start,
                    progress or Progress(echo), verbose, allow_schema_change)
    finally:
        lease.release()
        if progress is not None:
            progress.close()


def _pages(uris, size: int):
    """(page, is_last) for consecutive pages of up to `size` sources, listed as they are needed."""
    page: list[str] = []
    for u in uris:
        if len(page) == size:
            yield page, False
            page = []
        page.append(u)
    yield page, True


def _run(
    cfg: PipelineConfig, address, echo, retry_failed: bool, stages: list[Stage], weights: dict, store: Store,
    lease: manifest.Lease, t_start: float, progress: Progress, verbose: bool, allow_schema_change: bool,
) -> RunSummary:
    """The run proper, holding the lease: sources listed a page at a time, each page's pending
    videos run through Ray Data, rows written by the workers (curate.sink), counts to the driver."""
    resume = manifest.recover(store)
    # After the repair (which may remove the very parts that differ), before any part is written.
    out_schema, videos_schema = manifest.settle_schemas(
        store, manifest_schema(stages, transient=False), allow_change=allow_schema_change,
        added_later=_global_stage_outputs,
    )
    summary = RunSummary(inputs=0)
    flowing = flowing_stages(stages)
    metrics_data: dict = {}
    committer = ray = None
    for page, is_last in _pages(iter_sources(cfg.input), cfg.input.page_size):
        pending = [u for u, skip in zip(page, resume.done([video_id_for(u) for u in page], retry_failed)) if not skip]
        summary.inputs += len(page)
        summary.skipped_done += len(page) - len(pending)
        summary.retried += sum(resume.known([video_id_for(u) for u in pending]))
        progress.listing(summary.inputs, summary.skipped_done, summary.retried, is_last)
        if not pending:
            continue
        if ray is None:
            t_ray = time.perf_counter()
            ray = init_ray(cfg, address, stages, log_to_driver=verbose)
            summary.ray_start_s = time.perf_counter() - t_ray
            # Resolved once, from the cluster's GPUs: `auto` would otherwise import torch in every decode
            # worker (and in this driver) to look for one.
            summary.detector = resolve_detector_kind(cfg.shots, _gpu_count(ray))
            cfg = cfg.model_copy(update={"shots": cfg.shots.model_copy(update={"detector": summary.detector})})
            committer = Committer(ray, store, (out_schema, videos_schema), cfg.output.videos_per_part, cfg.output.flush_interval_s,
                                  lease, resume.attempts, manifest.new_run_token(), on_failed=progress.failed)
        progress.working()
        pending = longest_first(pending)
        for report in _dataset(ray, cfg, stages, flowing, pending, weights, committer).iter_batches(batch_size=None, batch_format="pyarrow"):
            committer.add(report)
            progress.update(committer.counts, committer.busy)
    if committer is not None:
        committer.close()
        progress.update(committer.counts, committer.busy)
        metrics_data = committer.busy
        if summary.retried:
            manifest.recover(store)  # the retried videos' new rows supersede the old
    progress.close()

    for stage in stages:
        if isinstance(stage, GlobalStage):
            t0 = time.perf_counter()
            init_ray(cfg, address, stages)  # its steps are Ray tasks, also when no video was left to run
            stage.setup()
            echo(f"curate: {stage.name}: {stage.process_manifest(store)}")
            metrics_data[stage.name] = {"clips": 0, "frames": 0, "busy_s": time.perf_counter() - t0}

    from curate.report import collect, write_report

    summary.rules = [r for s in stages if s.name == "filter" for r in s.rules]
    summary.models = _models_used(cfg, stages, summary.detector)
    stats = collect(store, rules=summary.rules)
    _merge_previous(summary, store, metrics_data)
    _summarise(summary, stats, metrics_data, t_start)
    store.write_bytes("summary.json", json.dumps(summary.__dict__, indent=2, sort_keys=True).encode())
    write_report(cfg.output.path, store, stats=stats, summary=summary.__dict__, source_s3=cfg.input.s3)
    shard_cfg = cfg.shard_config()
    if shard_cfg is not None:
        from curate.shard import write_shards

        t0 = time.perf_counter()
        counts = write_shards(cfg.output.path, shard_cfg)
        echo(f"curate: shards written in {time.perf_counter() - t0:.1f}s: {counts}")
    echo(
        f"curate: done in {summary.wall_s:.1f}s: {summary.videos_ok} videos ok, {summary.videos_error} failed, "
        f"{summary.clips} clips ({summary.clips_kept} kept, {summary.clips_filtered} filtered, "
        f"{summary.clip_errors} failed in a stage) -> {cfg.output.path}"
    )
    if summary.videos_error:
        echo(f"curate: {summary.videos_error} videos failed (named in summary.json and report.html)")
    for clip_id, errs in stats.failed_clips[:20]:
        echo(f"curate: clip failed: {clip_id}: {'; '.join(errs)}")
    if summary.exit_code:
        echo("curate: a rerun retries the failures that may pass (I/O, S3, stage errors); --no-retry-failed keeps them")
    return summary


def _merge_previous(summary: RunSummary, store: Store, metrics: dict) -> None:
    """Fold the summary.json of earlier runs into this one: summed stage figures, every detector,
    the run count, so the output's summary never loses what an earlier run measured."""
    data = store.read_if_exists("summary.json")
    try:
        prev = json.loads(data) if data else {}
    except ValueError:
        prev = {}  # unreadable: this run's figures alone
    if not isinstance(prev, dict) or not prev:
        return
    for name, d in (prev.get("stages") or {}).items():
        m = metrics.setdefault(name, {"clips": 0, "frames": 0, "busy_s": 0.0})
        for k in ("clips", "frames", "busy_s"):
            m[k] += d.get(k) or 0
    detectors = set(filter(None, (prev.get("detector") or "").split(","))) | ({summary.detector} if summary.detector else set())
    summary.detector = ",".join(sorted(detectors)) or None
    summary.runs = (prev.get("runs") or 1) + 1
    seen = {(m["stage"], m["name"]) for m in summary.models}
    summary.models += [m for m in prev.get("models") or [] if (m.get("stage"), m.get("name")) not in seen]


def _models_used(cfg: PipelineConfig, stages: list[Stage], detector: str | None) -> list[dict]:
    """What summary.json and the dataset card say of this run's models (TransNetV2 only where it ran)."""
    ran_transnet = "transnetv2" in (detector or "").split(",")
    return [
        {"stage": r.stage, "name": r.name, "license": r.license,
         "source": r.hf_repo or r.url or (f"Python package {r.package[0]}" if r.package else r.local_path)}
        for r in model_refs(cfg, stages) if r.stage != "shots" or ran_transnet
    ]


def _summarise(summary: RunSummary, stats, metrics: dict, t_start: float) -> None:
    """Fill `summary` from the whole output's manifests (as `report.collect` streamed them)."""
    from curate.report import manifest_counts

    for name, value in manifest_counts(stats).items():
        setattr(summary, name, value)
    summary.stages = {
        name: {
            **d,
            "clips_per_s": d["clips"] / d["busy_s"] if d["busy_s"] else None,
            "frames_per_s": d["frames"] / d["busy_s"] if d["busy_s"] else None,
        }
        for name, d in metrics.items()
    }
    summary.wall_s = time.perf_counter() - t_start
