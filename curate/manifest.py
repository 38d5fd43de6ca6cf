"""Parquet manifests written so that a killed run resumes without duplicates or gaps.

A part is committed in two atomic writes: `clips/part-X.parquet`, then `videos/part-X.parquet`.
A video is finished exactly when its row is in a committed videos part; on start, a clips part
without its videos twin (the run died between the two writes) is deleted and its videos redone.
"""

from __future__ import annotations

import io
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from curate.record import VIDEO_SCHEMA
from curate.storage import Store, is_s3

CLIPS_DIR, VIDEOS_DIR = "clips", "videos"


def _to_parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, table.schema, compression="zstd") as writer:
        # A part of failed videos only has no clips: it gets no row group at all, as an empty
        # row group breaks some readers (Hugging Face datasets).
        if table.num_rows:
            writer.write_table(table)
    return buf.getvalue()


def read_dir(store: Store, rel_dir: str) -> pa.Table | None:
    names = [n for n in store.list(rel_dir) if n.endswith(".parquet")]
    if not names:
        return None
    tables = [pq.read_table(io.BytesIO(store.read_bytes(f"{rel_dir}/{n}"))) for n in names]
    return pa.concat_tables(tables, promote_options="permissive")


def recover(store: Store) -> set[str]:
    """Delete orphaned clips parts and temp files; return the video ids already finished."""
    store.clean_temp(CLIPS_DIR)
    store.clean_temp(VIDEOS_DIR)
    videos = set(store.list(VIDEOS_DIR))
    for name in store.list(CLIPS_DIR):
        if name.endswith(".parquet") and name not in videos:
            store.delete(f"{CLIPS_DIR}/{name}")
    done = read_dir(store, VIDEOS_DIR)
    return set(done.column("video_id").to_pylist()) if done is not None else set()


class ManifestWriter:
    """Collects rows per video as they stream in (clips of one video arrive in any order, through
    any number of stages) and commits whole videos, a part at a time."""

    def __init__(self, store: Store, clip_schema: pa.Schema, videos_per_part: int, flush_interval_s: float):
        self.store = store
        self.clip_schema = clip_schema
        self.videos_per_part = videos_per_part
        self.flush_interval_s = flush_interval_s
        self.open: dict[str, dict] = {}
        self.ready: list[dict] = []
        self.ready_since: float | None = None
        self.run_token = uuid.uuid4().hex[:8]
        self.seq = 0
        self.committed_videos: list[dict] = []
        self.committed_clips = 0

    def add(self, table: pa.Table) -> None:
        clip_cols = [c for c in self.clip_schema.names if c in table.column_names]
        for row in table.select(clip_cols + ["video", "emitted_clips"]).to_pylist():
            entry = self.open.setdefault(row["video_id"], {"clips": [], "video": None, "emitted": None})
            emitted = row.pop("emitted_clips")
            video = row.pop("video")
            if row["clip_id"] is None:
                entry["video"], entry["emitted"] = video, emitted
            else:
                entry["clips"].append(row)
            if entry["video"] is not None and len(entry["clips"]) == entry["emitted"]:
                if entry["video"]["status"] != "ok":
                    entry["clips"] = []  # the video failed after some clips were sent: keep none
                self.ready.append(self.open.pop(row["video_id"]))
                self.ready_since = self.ready_since or time.monotonic()
        self.maybe_flush()

    def maybe_flush(self) -> None:
        if len(self.ready) >= self.videos_per_part or (
            self.ready and time.monotonic() - (self.ready_since or 0) >= self.flush_interval_s
        ):
            self.flush()

    def flush(self) -> None:
        if not self.ready:
            return
        clips = [c for v in self.ready for c in sorted(v["clips"], key=lambda c: c["start_frame"])]
        videos = [v["video"] for v in self.ready]
        name = f"part-{self.run_token}-{self.seq:05d}.parquet"
        self.store.write_bytes(f"{CLIPS_DIR}/{name}", _to_parquet(pa.Table.from_pylist(clips, schema=self.clip_schema)))
        self.store.write_bytes(f"{VIDEOS_DIR}/{name}", _to_parquet(pa.Table.from_pylist(videos, schema=VIDEO_SCHEMA)))
        self.seq += 1
        self.committed_videos += videos
        self.committed_clips += len(clips)
        self.ready, self.ready_since = [], None

    def close(self) -> None:
        self.flush()
        if self.open:
            missing = ", ".join(sorted(self.open)[:5])
            raise RuntimeError(f"{len(self.open)} videos never completed (first: {missing})")


def committed_clip_parts(store: Store) -> list[str]:
    """Names of the clips parts whose videos twin is committed, sorted (a clips part alone is what
    a run killed between the two writes leaves; it counts for nothing)."""
    videos = set(store.list(VIDEOS_DIR))
    return [n for n in store.list(CLIPS_DIR) if n.endswith(".parquet") and n in videos]


def read_clips_part(store: Store, name: str, columns: list[str] | None = None) -> pa.Table:
    """One clips part: every column, or those of `columns` it has (a local part reads only their
    column chunks; an S3 part is fetched whole)."""
    rel = f"{CLIPS_DIR}/{name}"
    f = pq.ParquetFile(pa.BufferReader(store.read_bytes(rel)) if is_s3(store.root) else store.uri(rel))
    return f.read(columns=None if columns is None else [c for c in dict.fromkeys(columns) if c in f.schema_arrow.names])


def write_clips_part(store: Store, name: str, table: pa.Table) -> None:
    """Replace one clips part, in one atomic write."""
    store.write_bytes(f"{CLIPS_DIR}/{name}", _to_parquet(table))
