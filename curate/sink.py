"""Worker-side manifest sinks: clip rows are written by the Ray workers, the driver only counts.

The last operator of a run (`write_fragment`, a Ray Data task) writes each batch it receives, clip
rows and the video-only rows, as one Parquet *fragment* under `OUTPUT/_staging/<run>/`, and hands
the driver a few numbers per video (rows written, the clip count the video announced, its status).
The driver's `Committer` holds nothing but those counts for the videos in flight. Once a video's
rows are all in fragments, it is ready; a part's worth of ready videos is committed by a Ray task
(`commit_part`) that reads their rows back from the fragments and writes the two parts of the usual
protocol (`clips/part-X.parquet`, then `videos/part-X.parquet`, see curate.manifest), checking the
writer lease first. Fragments whose videos are all committed are deleted; a killed run's staging is
removed by the next run's recovery (its videos were never committed, so they are redone).

Fragments are named by their content (the ids of the rows they hold), so a task Ray retries after a
lost node rewrites the same fragment instead of adding a second copy; rows of a video are deduped by
clip id when its part is written.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import manifest
from curate.config import S3Config
from curate.storage import S3Unavailable, Store


# What a fragment writer tells the driver, one row per video in its batch.
REPORT_SCHEMA = pa.schema([
    pa.field("video_id", pa.string()),
    pa.field("fragment", pa.string()),
    pa.field("clip_rows", pa.int64()),
    pa.field("emitted", pa.int64()),  # on the video's own row: how many clip rows it announced
    pa.field("status", pa.string()),
    pa.field("error", pa.string()),  # a failed video's reason (and its source), for the progress display
    pa.field("source_uri", pa.string()),
    pa.field("kept", pa.int64()),
    pa.field("clip_errors", pa.int64()),
    pa.field("busy", pa.string()),  # JSON of this batch's per-stage work, on the first row only
    pa.field("fault", pa.string()),  # JSON of a run-stopping fault met writing the fragment (one row)
])
# Faults that stop a run wherever they happen (exit 1; nothing half-written, a rerun resumes). A
# worker reports them instead of raising, so the driver raises them as themselves, in one line.
RUN_STOPPING = (OSError, S3Unavailable, manifest.LeaseLost)


def fault_json(e: BaseException) -> str:
    if isinstance(e, OSError):
        return json.dumps({"type": "OSError", "errno": e.errno, "strerror": e.strerror, "filename": e.filename, "message": str(e)})
    return json.dumps({"type": type(e).__name__, "message": str(e)})


def raise_fault(fault: str) -> None:
    """Raise, in the driver, the run-stopping fault a worker reported."""
    f = json.loads(fault)
    if f["type"] == "OSError":
        raise OSError(f["errno"], f["strerror"], f["filename"]) if f["errno"] else OSError(f["message"])
    raise (manifest.LeaseLost if f["type"] == "LeaseLost" else S3Unavailable)(f["message"])


def _store(root: str, s3_json: str) -> Store:
    return Store(root, S3Config.model_validate_json(s3_json))


@dataclass(frozen=True)
class FragmentTarget:
    """Where the run's last operator writes its fragments, and which columns they keep."""

    root: str
    s3_json: str
    run_dir: str
    columns: tuple[str, ...]

    def write(self, table: pa.Table) -> pa.Table:
        return write_fragment(table, self)


def write_fragment(table: pa.Table, target: FragmentTarget) -> pa.Table:
    """Write a batch (manifest columns and video-only rows) as one fragment; return its report."""
    keys = sorted(
        cid if cid is not None else f"video:{vid}"
        for cid, vid in zip(table.column("clip_id").to_pylist(), table.column("video_id").to_pylist())
    )
    name = f"frag-{hashlib.sha1(chr(10).join(keys).encode()).hexdigest()[:24]}.parquet"
    rows = table.select([c for c in target.columns if c in table.column_names and c != "busy"])
    try:
        _store(target.root, target.s3_json).write_bytes(f"{target.run_dir}/{name}", manifest.to_parquet(rows))
    except RUN_STOPPING as e:
        return pa.Table.from_pylist([{"fault": fault_json(e)}], schema=REPORT_SCHEMA)

    busy: dict[str, dict] = {}
    for r in table.select(["busy", "emitted_clips"]).to_pylist() if "busy" in table.column_names else []:
        for e in r["busy"] or []:
            d = busy.setdefault(e["stage"], {"clips": 0, "frames": 0, "busy_s": 0.0})
            # split's entry rides on the video's record, which says how many clips it made
            d["clips"] += (r["emitted_clips"] or 0) if e["stage"] == "split" else 1
            d["frames"] += e["frames"]
            d["busy_s"] += e["seconds"]
    per_video: dict[str, dict] = {}
    for r in table.select(["video_id", "clip_id", "kept", "errors", "video", "emitted_clips"]).to_pylist():
        v = per_video.setdefault(r["video_id"], {"clip_rows": 0, "emitted": None, "status": None, "error": None,
                                                 "source_uri": None, "kept": 0, "clip_errors": 0})
        if r["clip_id"] is None:
            v["emitted"], v["status"] = r["emitted_clips"], r["video"]["status"]
            if v["status"] != "ok":
                v["error"], v["source_uri"] = r["video"]["error"], r["video"]["source_uri"]
        else:
            v["clip_rows"] += 1
            v["kept"] += bool(r["kept"])
            v["clip_errors"] += bool(r["errors"])
    out = [{"video_id": vid, "fragment": name, **v, "busy": None, "fault": None} for vid, v in per_video.items()]
    if out:
        out[0]["busy"] = json.dumps(busy)
    return pa.Table.from_pylist(out, schema=REPORT_SCHEMA)


def commit_part(
    root: str, s3_json: str, run_dir: str, part: str, fragments: list[str], video_ids: list[str],
    attempts: dict[str, int], schemas: tuple[pa.Schema, pa.Schema], lease_token: str | None,
) -> dict:
    """Ray task: write one manifest part for `video_ids` from their fragments (clips, then videos).
    A failed video keeps none of the clips it sent. Returns what it committed, or the fault that
    stopped it (`fault`)."""
    try:
        return _commit(_store(root, s3_json), run_dir, part, fragments, video_ids, attempts, schemas, lease_token)
    except RUN_STOPPING as e:
        return {"fault": fault_json(e)}


def _commit(store: Store, run_dir: str, part: str, fragments: list[str], video_ids: list[str],
            attempts: dict[str, int], schemas: tuple[pa.Schema, pa.Schema], lease_token: str | None) -> dict:
    clip_schema, videos_schema = schemas
    ids = pa.array(video_ids)
    tables = []
    for frag in fragments:
        t = pq.read_table(io.BytesIO(store.read_bytes(f"{run_dir}/{frag}")))
        tables.append(t.filter(pc.is_in(t.column("video_id"), ids)))
    rows = pa.concat_tables(tables, promote_options="permissive")
    is_video = pc.is_null(rows.column("clip_id"))
    videos = {}
    for r in rows.filter(is_video).select(["video_id", "video", "retryable"]).to_pylist():
        v = r["video"]
        videos[r["video_id"]] = {**v, "retryable": r["retryable"] if v["status"] != "ok" else None,
                                 "attempts": attempts.get(r["video_id"], 0) + 1}
    ok = pa.array([vid for vid, v in videos.items() if v["status"] == "ok"], pa.string())
    clips = rows.filter(pc.and_(pc.invert(is_video), pc.is_in(rows.column("video_id"), ok)))
    clips = clips.sort_by([("video_id", "ascending"), ("start_frame", "ascending"), ("clip_id", "ascending")])
    # A task Ray retried may have written a row twice: one per clip id.
    clips = manifest.conform(manifest.first_of_each(clips, "clip_id"), clip_schema)
    if lease_token is not None and not manifest.holds(store, lease_token):
        raise manifest.LeaseLost(f"{store.uri(manifest.LEASE)}: taken over by another run; this run stopped writing (rerun to resume)")
    store.write_bytes(f"{manifest.CLIPS_DIR}/{part}", manifest.to_parquet(clips))
    vrows = [videos[v] for v in sorted(videos)]
    store.write_bytes(f"{manifest.VIDEOS_DIR}/{part}", manifest.to_parquet(pa.Table.from_pylist(vrows, schema=videos_schema)))
    kept = pc.sum(pc.cast(clips.column("kept"), pa.int64())).as_py() or 0
    return {"videos": len(vrows), "errors": sum(v["status"] != "ok" for v in vrows), "clips": clips.num_rows, "kept": kept}


@dataclass
class _Video:
    clip_rows: int = 0
    emitted: int | None = None
    status: str | None = None
    kept: int = 0
    clip_errors: int = 0
    fragments: set[str] = field(default_factory=set)

    @property
    def complete(self) -> bool:
        return self.emitted is not None and self.clip_rows >= self.emitted


@dataclass
class Counts:
    """What a run has finished so far: videos and clips written to fragments or committed."""

    videos: int = 0
    errors: int = 0
    clips: int = 0
    kept: int = 0
    clip_errors: int = 0
    committed_videos: int = 0


class Committer:
    """Driver side: counts per video in flight; commits ready videos a part at a time as Ray tasks.

    `attempts(video_ids)` gives the earlier attempts of each (0 for a first run) for the videos rows."""

    def __init__(self, ray, store: Store, schemas: tuple[pa.Schema, pa.Schema], videos_per_part: int,
                 flush_interval_s: float, lease: manifest.Lease | None, attempts, run_token: str, on_failed=None):
        self.ray = ray
        self.store = store
        self.schemas = schemas  # (clips, videos) parts are written with
        self.videos_per_part = videos_per_part
        self.flush_interval_s = flush_interval_s
        self.lease = lease
        self.attempts = attempts
        self.on_failed = on_failed  # called with (source_uri, error) for each video that failed
        self.run_token = run_token
        self.run_dir = f"{manifest.STAGING_DIR}/{run_token}"
        self.s3_json = store.cfg.model_dump_json()
        self.open: dict[str, _Video] = {}
        self.ready: list[tuple[str, _Video]] = []
        self.ready_since: float | None = None
        self.refs: dict[str, int] = {}  # fragment -> videos in it not committed yet
        self.inflight: dict = {}  # commit task ref -> the videos it commits
        self.seq = 0
        self.counts = Counts()
        self.busy: dict[str, dict] = {}
        self._commit = ray.remote(num_cpus=0.25, max_retries=3)(commit_part)

    def target(self, columns: list[str]) -> FragmentTarget:
        """Where the run's last operator writes, keeping `columns`."""
        return FragmentTarget(self.store.root, self.s3_json, self.run_dir, tuple(columns))

    def add(self, report: pa.Table) -> None:
        for r in report.to_pylist():
            if r["fault"]:
                raise_fault(r["fault"])
            if r["busy"]:
                for stage, d in json.loads(r["busy"]).items():
                    m = self.busy.setdefault(stage, {"clips": 0, "frames": 0, "busy_s": 0.0})
                    for k in m:
                        m[k] += d[k]
            v = self.open.setdefault(r["video_id"], _Video())
            if r["fragment"] not in v.fragments:
                v.fragments.add(r["fragment"])
                self.refs[r["fragment"]] = self.refs.get(r["fragment"], 0) + 1
            v.clip_rows += r["clip_rows"]
            v.kept += r["kept"]
            v.clip_errors += r["clip_errors"]
            if r["emitted"] is not None:
                v.emitted, v.status = r["emitted"], r["status"]
                if r["error"] is not None and self.on_failed is not None:
                    self.on_failed(r["source_uri"], r["error"])
            if v.complete:
                self.ready.append((r["video_id"], self.open.pop(r["video_id"])))
                self.ready_since = self.ready_since or time.monotonic()
                self._count(v)
        self.poll()
        if len(self.ready) >= self.videos_per_part or (
            self.ready and time.monotonic() - (self.ready_since or 0) >= self.flush_interval_s
        ):
            self.flush()

    def _count(self, v: _Video) -> None:
        c = self.counts
        c.videos += 1
        if v.status != "ok":
            c.errors += 1
        else:
            c.clips += v.emitted
            c.kept += v.kept
            c.clip_errors += v.clip_errors

    def flush(self) -> None:
        if not self.ready:
            return
        if self.lease is not None:
            self.lease.check()
        ids = [vid for vid, _ in self.ready]
        fragments = sorted({f for _, v in self.ready for f in v.fragments})
        part = f"part-{self.run_token}-{self.seq:05d}.parquet"
        ref = self._commit.remote(self.store.root, self.s3_json, self.run_dir, part, fragments, ids,
                                  self.attempts(ids), self.schemas, self.lease.token if self.lease else None)
        self.inflight[ref] = self.ready
        self.seq += 1
        self.ready, self.ready_since = [], None

    def poll(self, wait: bool = False) -> None:
        """Collect finished commit tasks (all of them with `wait`); a failed commit raises here."""
        while self.inflight:
            done, _ = self.ray.wait(list(self.inflight), num_returns=1, timeout=None if wait else 0)
            if not done:
                return
            videos = self.inflight.pop(done[0])
            got = self.ray.get(done[0])
            if got.get("fault"):
                raise_fault(got["fault"])
            self.counts.committed_videos += got["videos"]
            for _, v in videos:
                for f in v.fragments:
                    self.refs[f] -= 1
                    if not self.refs[f]:
                        del self.refs[f]
                        self.store.delete(f"{self.run_dir}/{f}")

    def close(self) -> None:
        """Commit everything ready, wait for every commit, remove this run's staging."""
        self.flush()
        self.poll(wait=True)
        if self.open:
            missing = ", ".join(sorted(self.open)[:5])
            raise RuntimeError(f"{len(self.open)} videos never completed (first: {missing})")
        # Fragments of retried tasks that were never reported; the whole staging area, as this run
        # holds the output's lease (no other run can be writing there).
        self.store.delete_tree(manifest.STAGING_DIR)
