"""Runs a pipeline on Ray Data: sources -> split (decode once, detect, shape) -> stages -> manifests.

Ray Data does the scheduling, streaming and backpressure; this module only wires stages into
`map_batches` (model stages as actor pools, pixel stages as tasks) and commits finished videos on
the driver. Records that are video-only (no clip) or not eligible for a kept-only stage pass
around `process_batch` untouched.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from functools import partial

import pyarrow as pa

from curate import manifest
from curate.config import PipelineConfig
from curate.models import ModelRef, fetch
from curate.record import (
    TRANSIENT_NAMES,
    clip_schema,
    from_table,
    to_table,
    video_id_for,
)
from curate.shots import resolve_detector_kind, transnetv2_ref
from curate.sources import list_sources
from curate.stage import GlobalStage, Stage
from curate.storage import Store, is_s3, local_copy

log = logging.getLogger("curate")

ERRORS_FIELD = pa.field("errors", pa.list_(pa.string()))
# Transient columns the driver needs besides the manifest's (the last operator drops all others).
TO_DRIVER = {"video", "emitted_clips", "busy"}
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
    return clip_schema(fields, transient=transient)


def driver_schema(stages: list[Stage]) -> pa.Schema:
    """What the last operator sends the driver: the manifest's columns and TO_DRIVER."""
    full = manifest_schema(stages, transient=True)
    keep = set(manifest_schema(stages, transient=False).names) | TO_DRIVER
    return pa.schema([f for f in full if f.name in keep])


def _busy(stage: str, seconds: float, frames: int) -> list[dict]:
    return [{"stage": stage, "seconds": seconds, "frames": frames}]


# ---------------------------------------------------------------- worker side


def split_batch(batch: pa.Table, cfg: PipelineConfig, schema: pa.Schema, weights: str | None):
    """Ray Data UDF: one source row in, a stream of record tables (of `schema`) out."""
    from curate.split import split_video, video_record

    for uri in batch.column("source_uri").to_pylist():
        t0 = time.perf_counter()
        rows: list[dict] = []
        sent = 0
        try:
            with local_copy(uri, cfg.input.s3) as path:
                for rec in split_video(uri, path, cfg, weights):
                    if rec["clip_id"] is None:
                        rec["busy"] = _busy("split", time.perf_counter() - t0, rec["video"].get("num_frames") or 0)
                    rows.append(rec)
                    if len(rows) >= 4:
                        yield to_table(rows, schema)
                        sent += sum(1 for r in rows if r["clip_id"] is not None)
                        rows = []
        except Exception as e:  # a download or I/O failure is still only this video's failure
            rows = [video_record(video_id_for(uri), uri, None, f"{type(e).__name__}: {e}", [], 0, sent)]
            rows[0]["busy"] = _busy("split", time.perf_counter() - t0, 0)
        if rows:
            yield to_table(rows, schema)


class StageRunner:
    """Adapts a Stage to Ray Data: unpacks arrays, routes eligible records through process_batch,
    records a failing batch's error on its clips (never swallowed, never fatal)."""

    def __init__(self, stage: Stage, schema: pa.Schema):
        self.stage = stage
        self.schema = schema  # of the output: the driver's when this is the last stage
        self.stage.setup()

    def __call__(self, table: pa.Table) -> pa.Table:
        # Transient columns the stage does not read skip the round trip through Python objects and
        # are re-attached unchanged when the output has them (for the filter, that is every frame).
        untouched = [c for c in TRANSIENT_NAMES - PASSTHROUGH if c in table.column_names and c not in self.stage.reads]
        rows = from_table(table.drop_columns(untouched))
        idx = [
            i
            for i, r in enumerate(rows)
            if r["clip_id"] is not None and (not self.stage.kept_only or r.get("kept", True))
        ]
        t0 = time.perf_counter()
        if idx:
            batch = [rows[i] for i in idx]
            try:
                out = self.stage.process_batch(batch)
                if len(out) != len(batch):
                    raise RuntimeError(f"returned {len(out)} records for {len(batch)}")
            except Exception as e:
                msg = f"{self.stage.name}: {type(e).__name__}: {e}"
                log.warning("stage %s failed on a batch: %s\n%s", self.stage.name, e, traceback.format_exc())
                out = batch
                for r in out:
                    r["errors"] = list(r.get("errors") or []) + [msg]
            share = (time.perf_counter() - t0) / len(idx)
            for i, r in zip(idx, out):
                r["busy"] = list(r.get("busy") or []) + _busy(self.stage.name, share, len(r.get("frame_indices") or []))
                rows[i] = r
        attach = [c for c in untouched if c in self.schema.names]
        out = to_table(rows, pa.schema([f for f in self.schema if f.name not in attach]))
        for c in attach:
            out = out.append_column(self.schema.field(c), table.column(c))
        return out.select(self.schema.names)


_TASK_RUNNERS: dict[str, StageRunner] = {}


def run_stage_task(table: pa.Table, stage: Stage, schema: pa.Schema) -> pa.Table:
    """Task-mode entry: one StageRunner (and one setup()) per worker process, reused across tasks."""
    key = f"{stage.name}:{stage.model_dump_json()}:{schema.names}"
    runner = _TASK_RUNNERS.get(key)
    if runner is None:
        runner = _TASK_RUNNERS[key] = StageRunner(stage, schema)
    return runner(table)


# ---------------------------------------------------------------- driver side


@dataclass
class RunSummary:
    inputs: int = 0
    skipped_done: int = 0
    videos_ok: int = 0
    videos_error: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    clips: int = 0
    clips_kept: int = 0
    clips_filtered: int = 0
    filter_reasons: dict[str, int] = field(default_factory=dict)
    clip_errors: int = 0
    wall_s: float = 0.0
    ray_start_s: float = 0.0
    detector: str | None = None  # the shot detector that ran (`auto` resolved)
    stages: dict[str, dict] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 3 if self.videos_error else 0


def init_ray(cfg: PipelineConfig, address: str | None, stages: list[Stage]):
    import ray

    if ray.is_initialized():
        return ray
    # A driver that `ray job submit` started finds its cluster in RAY_ADDRESS.
    address = address or cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return ray
    # Embedded local Ray: loopback only, bounded object store. Model actors hold their logical CPUs
    # for the whole run but sit idle between batches, so they are counted on top of the machine's
    # cores: decoding and pixel stages still get one task per core.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    actor_cpus = sum(s.num_cpus * s.pool_size for s in stages if s.uses_actors)
    num_cpus = cfg.ray.num_cpus or (os.cpu_count() or 1) + math.ceil(actor_cpus)
    ray.init(
        num_cpus=num_cpus,
        object_store_memory=cfg.ray.object_store_memory,
        include_dashboard=False,
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    return ray


def _add_busy(metrics: dict, column: pa.ChunkedArray) -> None:
    """Sum the records' `busy` entries into per-stage clips, frames and busy seconds."""
    for entries in column.to_pylist():
        for e in entries or []:
            d = metrics.setdefault(e["stage"], {"clips": 0, "frames": 0, "busy_s": 0.0})
            d["clips"] += e["stage"] != "split"  # split's entry rides on the video's record
            d["frames"] += e["frames"]
            d["busy_s"] += e["seconds"]


def _progress_line(done: int, total: int, errors: int, clips: int, elapsed: float, metrics: dict) -> str:
    parts = [f"videos {done}/{total} ({errors} failed)", f"clips {clips}", f"{elapsed:.0f}s"]
    for name, d in metrics.items():
        busy = d["busy_s"] or float("nan")
        if name == "split":
            parts.append(f"split: {d['frames']} frames ({d['frames'] / busy:.0f}/s per worker)")
        else:
            parts.append(f"{name}: {d['clips']} clips ({d['clips'] / busy:.1f}/s per worker)")
    return " | ".join(parts)


def _worker_env(cfg: PipelineConfig, uris: list[str]) -> dict[str, str]:
    """The driver's S3 credentials, handed to the workers when S3 is used: workers of a cluster
    joined with --address (or of a Ray started before the keys were set) never saw this environment."""
    if not (any(is_s3(u) for u in uris) or is_s3(cfg.output.path)):
        return {}
    names = [n for s3 in (cfg.input.s3, cfg.output.s3) for n in (s3.access_key_env, s3.secret_key_env)]
    return {n: os.environ[n] for n in dict.fromkeys(names + ["AWS_SESSION_TOKEN"]) if os.environ.get(n)}


def _gpu_count(ray) -> float:
    try:
        return float(ray.cluster_resources().get("GPU", 0))
    except Exception:
        return 0.0


def run_pipeline(cfg: PipelineConfig, address: str | None = None, echo=print) -> RunSummary:
    t_start = time.perf_counter()
    stages = pipeline_stages(cfg)
    # Every model is found (or downloaded) before any work: a missing one fails here, not midway.
    weights = {r.name: fetch(r) for r in model_refs(cfg, stages)}

    store = Store(cfg.output.path, cfg.output.s3)
    uris = list_sources(cfg.input)
    done = manifest.recover(store)
    pending = [u for u in uris if video_id_for(u) not in done]
    summary = RunSummary(inputs=len(uris), skipped_done=len(uris) - len(pending))
    echo(f"curate: {len(uris)} inputs, {summary.skipped_done} already done, {len(pending)} to process")

    full_schema = manifest_schema(stages, transient=True)
    out_schema = manifest_schema(stages, transient=False)
    writer = manifest.ManifestWriter(store, out_schema, cfg.output.videos_per_part, cfg.output.flush_interval_s)

    metrics_data: dict = {}
    if pending:
        t_ray = time.perf_counter()
        ray = init_ray(cfg, address, stages)
        summary.ray_start_s = time.perf_counter() - t_ray
        gpus = _gpu_count(ray)
        # Resolved once, from the cluster's GPUs: `auto` would otherwise import torch in every decode
        # worker (and in this driver) to look for one.
        summary.detector = resolve_detector_kind(cfg.shots, gpus)
        cfg = cfg.model_copy(update={"shots": cfg.shots.model_copy(update={"detector": summary.detector})})
        transnet_weights = weights.get(transnetv2_ref(cfg.shots).name) if summary.detector == "transnetv2" else None
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = False
        ctx.target_max_block_size = cfg.ray.block_mb * 1024**2
        ctx.enable_progress_bars = sys.stderr.isatty()
        env = _worker_env(cfg, pending)
        remote_args = {"runtime_env": {"env_vars": env}} if env else {}

        # Each operator's output schema; the last one's is the driver's (transient columns dropped there).
        flowing = [s for s in stages if not isinstance(s, GlobalStage)]
        metrics_data = {name: {"clips": 0, "frames": 0, "busy_s": 0.0} for name in ["split"] + [s.name for s in flowing]}
        schemas = [full_schema] * len(flowing) + [driver_schema(stages)]
        ds = ray.data.from_items([{"source_uri": u} for u in pending], override_num_blocks=len(pending))
        ds = ds.map_batches(
            partial(split_batch, cfg=cfg, schema=schemas[0], weights=transnet_weights),
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=1,
            # The decode pass's own memory (bounded, see bench/memory.py). Declaring it also keeps Ray
            # Data from fusing decoding into a stage's actors (which would cap decoding at the pool
            # size) or into task stages (which would bundle `batch_size` videos into one task).
            memory=DECODE_MEMORY_BYTES,
            concurrency=cfg.ray.split_concurrency,
            **remote_args,
        )
        for stage, schema in zip(flowing, schemas[1:]):
            num_gpus = stage.num_gpus if stage.num_gpus is not None else (
                stage.gpu_fraction if (stage.uses_gpu and gpus) else 0
            )
            common = dict(batch_size=stage.batch_size, batch_format="pyarrow", num_cpus=stage.num_cpus, num_gpus=num_gpus, **remote_args)
            if stage.uses_actors:
                ds = ds.map_batches(
                    StageRunner,
                    fn_constructor_kwargs={"stage": stage, "schema": schema},
                    compute=ray.data.ActorPoolStrategy(size=stage.pool_size),
                    # Declared memory also keeps Ray Data from fusing pixel tasks into model actors.
                    memory=(stage.memory_mb or stage.default_memory_mb) * 1024**2,
                    **common,
                )
            else:
                ds = ds.map_batches(partial(run_stage_task, stage=stage, schema=schema), **common)

        last = 0.0
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            _add_busy(metrics_data, batch.column("busy"))
            writer.add(batch)
            now = time.perf_counter()
            if now - last > 5:
                last = now
                finished = writer.committed_videos + [v["video"] for v in writer.ready]
                errors = sum(1 for v in finished if v["status"] == "error")
                clips = writer.committed_clips + sum(len(v["clips"]) for v in writer.ready)
                echo("curate: " + _progress_line(len(finished), len(pending), errors, clips, now - t_start, metrics_data))
        writer.close()

    for stage in stages:
        if isinstance(stage, GlobalStage):
            t0 = time.perf_counter()
            init_ray(cfg, address, stages)  # its steps are Ray tasks, also when no video was left to run
            stage.setup()
            echo(f"curate: {stage.name}: {stage.process_manifest(store)}")
            metrics_data[stage.name] = {"clips": 0, "frames": 0, "busy_s": time.perf_counter() - t0}

    videos, clips = manifest.read_dir(store, manifest.VIDEOS_DIR), manifest.read_dir(store, manifest.CLIPS_DIR)
    _summarise(summary, videos, clips, metrics_data, t_start)
    store.write_bytes("summary.json", json.dumps(summary.__dict__, indent=2, sort_keys=True).encode())
    from curate.report import write_report

    rules = [r for s in stages if s.name == "filter" for r in s.rules]
    write_report(
        cfg.output.path, store, rules=rules, manifests=(videos, clips), summary=summary.__dict__, source_s3=cfg.input.s3
    )
    shard_cfg = cfg.shard_config()
    if shard_cfg is not None:
        from curate.shard import write_shards

        t0 = time.perf_counter()
        counts = write_shards(cfg.output.path, shard_cfg)
        echo(f"curate: shards written in {time.perf_counter() - t0:.1f}s: {counts}")
    echo(
        f"curate: done in {summary.wall_s:.1f}s: {summary.videos_ok} videos ok, {summary.videos_error} failed, "
        f"{summary.clips} clips ({summary.clips_kept} kept, {summary.clips_filtered} filtered) -> {cfg.output.path}"
    )
    for uri, err in list(summary.errors.items())[:20]:
        echo(f"curate: failed: {uri}: {err}")
    return summary


def _summarise(summary: RunSummary, videos: pa.Table | None, clips: pa.Table | None, metrics: dict, t_start: float) -> None:
    if videos is not None:
        for v in videos.select(["source_uri", "status", "error"]).to_pylist():
            if v["status"] == "ok":
                summary.videos_ok += 1
            else:
                summary.videos_error += 1
                summary.errors[v["source_uri"]] = v["error"]
    if clips is not None:
        rows = clips.select(["kept", "filter_reasons", "errors"]).to_pylist()
        summary.clips = len(rows)
        summary.clips_kept = sum(1 for r in rows if r["kept"])
        summary.clips_filtered = summary.clips - summary.clips_kept
        summary.clip_errors = sum(1 for r in rows if r["errors"])
        for r in rows:
            for reason in r["filter_reasons"] or []:
                summary.filter_reasons[reason] = summary.filter_reasons.get(reason, 0) + 1
    summary.stages = {
        name: {
            **d,
            "clips_per_s": d["clips"] / d["busy_s"] if d["busy_s"] else None,
            "frames_per_s": d["frames"] / d["busy_s"] if d["busy_s"] else None,
        }
        for name, d in metrics.items()
    }
    summary.wall_s = time.perf_counter() - t_start
