"""Parquet manifests written so that a killed run resumes without duplicates or gaps, by one writer.

A part is committed in two atomic writes: `clips/part-X.parquet`, then `videos/part-X.parquet`.
A video is finished exactly when its row is in a committed videos part whose clips twin holds its
`num_clips` clips. Only the run holding the output's lease (`Lease`) writes; on start it repairs
what a killed run, or a concurrent run of an older version, left (`recover`). A rerun redoes
videos that failed for a reason that may pass and videos with a clip a stage failed on; the new
row, with `attempts` one higher, supersedes the old one.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.config import ConfigError
from curate.record import COLLECTION_COLUMNS, VIDEO_FIELDS
from curate.storage import Store

log = logging.getLogger("curate")

CLIPS_DIR, VIDEOS_DIR, MEDIA_DIR = "clips", "videos", "media"
# Fragments workers write before their videos are committed (curate.sink); a leading underscore
# keeps pyarrow.dataset and Hugging Face datasets from reading them as part of the output.
STAGING_DIR = "_staging"
# The videos manifest: the record's video columns, then what resuming needs. `retryable`: a failed
# video whose cause may pass (I/O, S3, timeouts; not a verdict on the media), null for ok rows.
# `attempts`: how many runs processed this source, this one included.
VIDEOS_SCHEMA = pa.schema(VIDEO_FIELDS + [pa.field("retryable", pa.bool_()), pa.field("attempts", pa.int64())])

# What resuming reads of each videos row (older parts lack the last two).
RESUME_COLUMNS = ["video_id", "status", "num_clips", "retryable", "attempts"]

LEASE = "lease.json"
# A lease not renewed for this long is stale (its run died): the next run takes it over. Renewed
# every quarter of it, so a live run survives three missed renewals (an S3 hiccup, a long GC).
LEASE_TTL_S = 120.0


def to_parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, table.schema, compression="zstd") as writer:
        # A part of failed videos only has no clips: it gets no row group at all, as an empty
        # row group breaks some readers (Hugging Face datasets).
        if table.num_rows:
            writer.write_table(table)
    return buf.getvalue()


def _read(store: Store, rel: str, columns=None) -> pa.Table:
    """A Parquet file of the store, or the `columns` of it that it has (a list, or a function of
    the file's schema giving one); only those columns are decoded."""
    # A local part is opened in place, so that only the chosen columns' chunks are read.
    f = pq.ParquetFile(io.BytesIO(store.read_bytes(rel)) if store.s3 else store.uri(rel))
    if callable(columns):
        columns = columns(f.schema_arrow)
    return f.read(columns=None if columns is None else [c for c in columns if c in f.schema_arrow.names])


def scan(store: Store, rel_dir: str, columns=None, parts: list[str] | None = None):
    """The committed parts of `rel_dir` one at a time, only `columns` (as `_read` takes them):
    global steps stream the manifest this way instead of holding every part at once."""
    for name in parts if parts is not None else committed_parts(store):
        yield _read(store, f"{rel_dir}/{name}", columns)


# ---------------------------------------------------------------- one schema per manifest


class SchemaChanged(ConfigError):
    """A run would write manifest parts whose columns differ from the parts already in its output."""


# A Parquet footer is the file's last 8 bytes (footer length, "PAR1") and the footer before them.
_FOOTER_GUESS = 64 * 1024


def committed_parts(store: Store) -> list[str]:
    """Names of the committed parts: those in both clips/ and videos/ (the writer commits a clips
    part, then its videos twin; `recover` removes either one alone)."""
    videos = set(store.list(VIDEOS_DIR))
    return [n for n in store.list(CLIPS_DIR) if n.endswith(".parquet") and n in videos]


def part_schema(store: Store, rel: str) -> pa.Schema:
    """A Parquet file's schema from its footer alone (one ranged read on S3)."""
    tail = store.read_tail(rel, _FOOTER_GUESS)
    size = int.from_bytes(tail[-8:-4], "little") + 8
    if size > len(tail):
        tail = store.read_tail(rel, size)
    # The footer alone, behind the leading magic bytes, reads as a file without row groups.
    return pq.read_schema(pa.BufferReader(b"PAR1" + tail[-size:])).remove_metadata()


def _describe_fields(fields: list[pa.Field]) -> str:
    return ", ".join(f"{f.name} ({f.type})" for f in fields)


def schema_difference(existing: pa.Schema, wanted: pa.Schema) -> str:
    """How `existing` differs from `wanted`, in words (empty when they are equal)."""
    have, want = set(existing.names), set(wanted.names)
    out = []
    if have - want:
        out.append("only in the output: " + _describe_fields([f for f in existing if f.name not in want]))
    if want - have:
        out.append("only in this run: " + _describe_fields([f for f in wanted if f.name not in have]))
    out += [f"{f.name} is {f.type} in the output, {wanted.field(f.name).type} in this run"
            for f in existing if f.name in want and f.type != wanted.field(f.name).type]
    if not out and existing.names != wanted.names:
        out.append("the same columns in another order")
    return "; ".join(out)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns: cast where it has them, else empty lists (for
    COLLECTION_COLUMNS) or nulls."""
    n = table.num_rows
    columns = []
    for f in schema:
        if f.name in table.column_names:
            columns.append(table.column(f.name).cast(f.type))
        elif f.name in COLLECTION_COLUMNS:
            columns.append(pa.array([[]] * n, f.type))
        else:
            columns.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def settle_schemas(
    store: Store, clips: pa.Schema, videos: pa.Schema = VIDEOS_SCHEMA, allow_change: bool = False,
    added_later: Callable[[], list[pa.Field]] = list,
) -> tuple[pa.Schema, pa.Schema]:
    """The (clips, videos) schemas a run into `store` must write its parts with, so that every part
    of a manifest has the same columns in the same order with the same types (on a glob of mixed
    parts polars fails, and DuckDB, pyarrow and pandas drop columns depending on file order).

    A new output, or one whose committed parts all have exactly `clips` and `videos` (read from the
    Parquet footers only), gets them back. Otherwise SchemaChanged, one line naming a part and the
    difference, unless `allow_change`: then every part that differs is rewritten to the union (this
    run's columns in its order, then those only the output has; types promoted where no value
    changes, e.g. float to double; empty lists or nulls where a part lacks a column), one atomic
    write per part, and the union is returned. Holding the lease, before any part is written.

    `added_later`: the clips columns a step run on the finished output adds to every part (`curate
    dedup`'s `duplicate_of`), asked for only when the parts hold columns `clips` lacks. Parts that
    have one keep it without a word, and this run writes it too (null until that step runs again),
    so a pipeline without the step resumes there."""
    names = committed_parts(store)
    out = []
    for rel_dir, wanted in ((CLIPS_DIR, clips), (VIDEOS_DIR, videos)):
        wanted = wanted.remove_metadata()
        found = {f"{rel_dir}/{n}": part_schema(store, f"{rel_dir}/{n}") for n in names}
        extra = {f.name for schema in found.values() for f in schema} - set(wanted.names)
        if rel_dir == CLIPS_DIR and extra:
            for f in added_later():
                if f.name in extra:
                    wanted = wanted.append(f)
        differ = {rel: schema for rel, schema in found.items() if not schema.equals(wanted)}
        if differ and not allow_change:
            rel, schema = next(iter(differ.items()))
            raise SchemaChanged(
                f"{store.uri(rel)} has other columns than this pipeline writes ({schema_difference(schema, wanted)}); "
                "rerun with --allow-schema-change to rewrite the existing parts to the union of both, "
                "or write to a new output.path"
            )
        try:
            union = pa.unify_schemas([wanted, *differ.values()], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise SchemaChanged(f"{store.uri(rel_dir)}: its parts cannot be rewritten to this pipeline's columns: {e}") from None
        for rel, schema in found.items():
            if not schema.equals(union):
                store.write_bytes(rel, to_parquet(conform(_read(store, rel), union)))
        out.append(union)
    return out[0], out[1]


# ---------------------------------------------------------------- the writer lease


class LeaseHeld(Exception):
    """Another run holds the output's lease."""


class LeaseLost(Exception):
    """This run's lease was taken over (--force, or it went stale): it must stop writing."""


class Lease:
    """One writer per output: OUTPUT/lease.json, written by compare-and-swap (under a file lock
    locally, a conditional PUT on S3), renewed every `ttl_s / 4` by a thread while the run goes on, deleted at
    its end. A lease whose last renewal is older than `ttl_s` on the store's clock (mtime locally,
    the server's Date against LastModified on S3) belongs to a dead run and is taken over, and so is
    one whose process is gone from this machine (killed runs resume at once); `force` takes over a
    live one. Anything that commits parts calls `check()` first, and a process other
    than the holder (a worker-side sink) can call `holds(store, token)` with the run's token.
    """

    def __init__(self, store: Store, ttl_s: float = LEASE_TTL_S, force: bool = False):
        self.store = store
        self.ttl_s = ttl_s
        self.force = force
        self.token = uuid.uuid4().hex
        self.started = _now()
        self.version: str | None = None
        self.lost: str | None = None
        self._renewed = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({
            "token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "started": self.started,
            "renewed": _now(), "ttl_s": self.ttl_s, **_process_identity(os.getpid()),
        }).encode()

    def _write(self, expect: str | None) -> str | None:
        """Conditional write of a fresh body; its version, or None if another run's body is there.
        Read back either way: a retried conditional PUT whose first try landed reports a conflict
        with itself."""
        body = self._body()
        self.store.swap(LEASE, body, expect)
        now = self.store.read_versioned(LEASE)
        return now.version if now is not None and now.data == body else None

    def acquire(self) -> Lease:
        """Take the lease (LeaseHeld if a live run holds it) and start renewing it."""
        for _ in range(3):  # a race with another starting run is settled within a round or two
            cur = self.store.read_versioned(LEASE)
            if cur is not None:
                holder = _holder(cur.data)
                ttl = holder.get("ttl_s") or self.ttl_s
                if cur.age_s < ttl and not self.force and not _gone(holder):
                    raise LeaseHeld(_held_message(self.store, holder, cur.age_s, ttl))
            self.version = self._write(cur.version if cur is not None else None)
            if self.version is not None:
                break
        else:
            raise LeaseHeld(f"{self.store.uri(LEASE)}: another run is taking this output over at the same moment")
        self._renewed = time.monotonic()
        self._thread = threading.Thread(target=self._renew_loop, name="curate-lease", daemon=True)
        self._thread.start()
        return self

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                with self._lock:
                    version = self._write(self.version)
                    if version is None:
                        cur = self.store.read_versioned(LEASE)
                        self.lost = "taken over by " + (_describe(_holder(cur.data)) if cur else "a run that has since ended")
                        return
                    self.version, self._renewed = version, time.monotonic()
            except Exception as e:  # an outage: keep trying until the lease would have gone stale
                log.warning("could not renew the lease on %s: %s", self.store.root, e)
                if time.monotonic() - self._renewed > self.ttl_s:
                    self.lost = f"not renewed for {self.ttl_s:.0f}s ({e})"
                    return

    def check(self) -> None:
        """Raise LeaseLost unless this run still holds the lease (read from the store)."""
        with self._lock:
            if self.lost is None and not holds(self.store, self.token):
                self.lost = "taken over by another run"
        if self.lost is not None:
            raise LeaseLost(f"{self.store.uri(LEASE)}: {self.lost}; this run stopped writing (rerun to resume)")

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self.lost is None and self.version is not None:
                try:
                    self.store.delete_if(LEASE, self.version)
                except Exception as e:  # it goes stale by itself
                    log.warning("could not release the lease on %s: %s", self.store.root, e)


def holds(store: Store, token: str) -> bool:
    """Whether the run with `token` holds the output's lease now."""
    cur = store.read_versioned(LEASE)
    return cur is not None and _holder(cur.data).get("token") == token


def _process_identity(pid: int) -> dict:
    """Where a process runs and which one it is, on Linux: the boot and PID namespace (two
    containers of one host differ) and the process's start time (a reused pid differs)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pidns = os.stat("/proc/self/ns/pid").st_ino
        # Field 22 of /proc/PID/stat, counted after the command name (which may hold spaces).
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return {}
    return {"machine": f"{boot}/{pidns}", "pid_start": start}


def _gone(holder: dict) -> bool:
    """Whether the lease's holder ran on this machine and that process no longer exists."""
    mine = _process_identity(os.getpid())
    if not mine or holder.get("machine") != mine["machine"] or not isinstance(holder.get("pid"), int):
        return False
    return _process_identity(holder["pid"]).get("pid_start") != holder.get("pid_start")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _holder(data: bytes) -> dict:
    try:
        holder = json.loads(data)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} (started {holder.get('started', '?')})"


def _held_message(store: Store, holder: dict, age: float, ttl: float) -> str:
    return (
        f"output {store.root} is in use by another run: {_describe(holder)}, lease renewed {age:.0f}s ago. "
        f"Wait for that run to finish; if it died, rerun in {max(ttl - age, 0):.0f}s (the lease goes stale "
        f"{ttl:.0f}s after its last renewal) or now with --force"
    )


# ---------------------------------------------------------------- recovery


class Resume:
    """What the committed manifest holds, one entry per video, as three numpy columns sorted by id
    (13 bytes a video, so a driver resuming 10M videos holds about 130 MB): `ids` (uint64: a
    video_id's 16 hex digits, record.video_id_for, as the number they spell), `attempts` (int32)
    and `redo` (bool: worth another run, see `recover`)."""

    def __init__(self, ids: np.ndarray, attempts: np.ndarray, redo: np.ndarray):
        self.ids, self._attempts, self._redo = ids, attempts, redo

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self._attempts.nbytes + self._redo.nbytes

    def _find(self, video_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(position of each id in `ids`, whether it is there)."""
        nums = id_numbers(video_ids)
        pos = np.minimum(np.searchsorted(self.ids, nums), max(len(self.ids) - 1, 0))
        return pos, (self.ids[pos] == nums) if len(self.ids) else np.zeros(len(nums), bool)

    def known(self, video_ids: list[str]) -> list[bool]:
        """Whether each video has a committed row."""
        return self._find(video_ids)[1].tolist()

    def done(self, video_ids: list[str], retry_failed: bool) -> list[bool]:
        """Whether a run skips each video: every committed one, or with `retry_failed` those not worth another run."""
        pos, found = self._find(video_ids)
        return (found & ~self._redo[pos]).tolist() if retry_failed and len(self.ids) else found.tolist()

    def attempts(self, video_ids: list[str]) -> dict[str, int]:
        """Earlier attempts of each video (0 for one never committed)."""
        pos, found = self._find(video_ids)
        counts = np.where(found, self._attempts[pos] if len(self.ids) else 0, 0)
        return dict(zip(video_ids, counts.tolist()))


def id_numbers(video_ids) -> np.ndarray:
    """uint64 (n,): each video_id's 16 hex digits (record.video_id_for) as the number they spell.
    Raises ValueError for an id of another form (a manifest curate did not write)."""
    ids = pa.array(video_ids, pa.string()) if isinstance(video_ids, list) else video_ids
    if len(ids) and not (ids.null_count == 0 and pc.all(pc.match_substring_regex(ids, "^[0-9a-f]{16}$")).as_py()):
        bad = ids.filter(pc.invert(pc.fill_null(pc.match_substring_regex(ids, "^[0-9a-f]{16}$"), False)))[0]
        raise ValueError(f"video_id {bad.as_py()!r} is not 16 hex digits (curate's ids are the start of a SHA-1 of the source URI)")
    return np.fromiter((int(i, 16) for i in ids.to_pylist()), np.uint64, len(ids))


def recover(store: Store) -> Resume:
    """Repair the output and return what it holds (`Resume`).

    Removes temp files, the staging area of killed runs (curate.sink: rows never committed),
    clips parts without their videos twin (the run died between the two writes) and videos parts
    without their clips twin (a concurrent run of an older version deleted them), and keeps one row
    per video: a complete one (as many clips as `num_clips`) with the most attempts, from the first
    part in name order. Parts are read a column set at a time and rewritten clips first, so a run
    killed midway leaves an output this same repair finishes. Call it holding the lease. Raises
    ConfigError for a videos part whose ids curate did not make.

    A video is worth another run (`Resume.done` with retry_failed) when it failed with an error that
    may pass (rows older than the `retryable` flag count as such) or a stage failed on one of its
    clips (an mp4 that could not be written). Memory: about 45 bytes a video at the peak.
    """
    for d in (CLIPS_DIR, VIDEOS_DIR, MEDIA_DIR):
        store.clean_temp(d)
    store.delete_tree(STAGING_DIR)
    videos_parts = {n for n in store.list(VIDEOS_DIR) if n.endswith(".parquet")}
    clips_parts = {n for n in store.list(CLIPS_DIR) if n.endswith(".parquet")}
    for name in sorted(clips_parts - videos_parts):
        store.delete(f"{CLIPS_DIR}/{name}")
    for name in sorted(videos_parts - clips_parts):
        store.delete(f"{VIDEOS_DIR}/{name}")

    names = sorted(videos_parts & clips_parts)
    ids, attempts, redo, part, videos_in = [], [], [], [], []  # each part's complete rows; each part's videos
    for i, name in enumerate(names):
        clips = _read(store, f"{CLIPS_DIR}/{name}", ["video_id", "errors"])
        failed = pc.greater(pc.fill_null(pc.list_value_length(clips.column("errors")), 0), 0)
        per_video = pa.table({"video_id": clips.column("video_id"), "failed": failed}).group_by("video_id").aggregate(
            [("video_id", "count"), ("failed", "any")]
        )
        v = _read(store, f"{VIDEOS_DIR}/{name}", RESUME_COLUMNS)
        videos_in.append(v.num_rows)
        for col, kind in (("retryable", pa.bool_()), ("attempts", pa.int64())):
            if col not in v.column_names:  # parts written before resuming kept them
                v = v.append_column(col, pa.nulls(v.num_rows, kind))
        v = v.select(RESUME_COLUMNS).join(per_video, "video_id", join_type="left outer")
        v = v.filter(pc.equal(pc.fill_null(v.column("video_id_count"), 0), pc.fill_null(v.column("num_clips"), 0)))
        ok = pc.equal(v.column("status"), "ok")
        may_pass = pc.and_(pc.invert(ok), pc.invert(pc.fill_null(pc.equal(v.column("retryable"), False), False)))
        try:
            ids.append(id_numbers(v.column("video_id").combine_chunks()))
        except ValueError as e:
            raise ConfigError(f"{store.uri(VIDEOS_DIR)}/{name}: {e}: not a part curate wrote") from None
        attempts.append(pc.fill_null(v.column("attempts"), 1).to_numpy().astype(np.int32))
        redo.append(pc.or_(pc.and_(ok, pc.fill_null(v.column("failed_any"), False)), may_pass).to_numpy(zero_copy_only=False))
        part.append(np.full(v.num_rows, i, np.int32))
    if not ids:
        return Resume(np.zeros(0, np.uint64), np.zeros(0, np.int32), np.zeros(0, bool))
    # One entry a video: the most attempts, then the first part. Columns are sorted (and their
    # unsorted copies freed) one at a time.
    columns = [np.concatenate(c) for c in (ids, attempts, redo, part)]
    del ids, attempts, redo, part
    order = np.lexsort((columns[3], -columns[1], columns[0]))
    for c in range(4):
        columns[c] = columns[c][order]
    del order
    first = np.concatenate([[True], columns[0][1:] != columns[0][:-1]])
    ids, attempts, redo, part = (c[first] for c in columns)
    del columns, first

    kept = np.bincount(part, minlength=len(names))
    for i, name in enumerate(names):  # parts holding rows that lost to a better one, or incomplete rows
        if kept[i] < videos_in[i]:
            _rewrite_part(store, name, pa.array([f"{n:016x}" for n in ids[part == i].tolist()], pa.string()))
    return Resume(ids, attempts, redo)


def first_of_each(table: pa.Table, column: str) -> pa.Table:
    """The first row of each run of equal values of `column` (a table sorted by it: one row per value)."""
    if table.num_rows < 2:
        return table
    values = table.column(column).combine_chunks()
    changed = pc.fill_null(pc.not_equal(values.slice(1), values.slice(0, len(values) - 1)), True)
    return table.filter(pa.concat_arrays([pa.array([True]), changed]))


def _rewrite_part(store: Store, name: str, keep: pa.Array) -> None:
    """Rewrite a part pair with the rows of the videos in `keep` only (clips first)."""
    if not len(keep):
        store.delete(f"{VIDEOS_DIR}/{name}")  # uncommit first; the orphaned clips part goes next
        store.delete(f"{CLIPS_DIR}/{name}")
        return
    for d in (CLIPS_DIR, VIDEOS_DIR):
        table = _read(store, f"{d}/{name}")
        store.write_bytes(f"{d}/{name}", to_parquet(table.filter(pc.is_in(table.column("video_id"), keep))))


def new_run_token() -> str:
    """A short id for one run's parts and staging (`part-<token>-00000.parquet`)."""
    return uuid.uuid4().hex[:8]


def read_clips_part(store: Store, name: str, columns: list[str] | None = None) -> pa.Table:
    """One committed clips part: every column, or those of `columns` it has."""
    return _read(store, f"{CLIPS_DIR}/{name}", None if columns is None else list(dict.fromkeys(columns)))


def write_clips_part(store: Store, name: str, table: pa.Table) -> None:
    """Replace one clips part, in one atomic write."""
    store.write_bytes(f"{CLIPS_DIR}/{name}", to_parquet(table))
