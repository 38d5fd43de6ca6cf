"""WebDataset shards of the curated clips, bucketed for training, with a Parquet index.

Each kept clip becomes three tar members: `KEY.mp4` (the clip itself: a reference window re-encoded
to a standalone mp4, a clip file copied as is), `KEY.json` (its manifest row) and `KEY.txt` (its
caption, empty when it has none). Shards are grouped by resolution, aspect ratio and frame count,
`resolution_720/aspect_ratio_16_9/frames_0_255/shard-000000.tar`, so a trainer can draw same-shape
batches, and each shard is closed once it reaches `target_size`.

`index.parquet` at the root holds every manifest column of every sharded clip plus where it lives
(`shard`, `key`, `bucket`) and the byte offset and size of each member, so one clip can be read
with a range request instead of a scan of its tar.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import tarfile
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator

from curate.config import S3Config
from curate.record import CLIP_FIELDS, TRANSIENT_NAMES, clip_file
from curate.storage import Store, is_s3, local_copy, read_s3

MEMBERS = ("mp4", "json", "txt")


class ShardConfig(BaseModel):
    """`curate shard` options, and the pipeline's `shard:` section when shards are its last step."""

    model_config = ConfigDict(extra="forbid")

    # Where shards go; default OUTPUT/shards.
    out: str | None = None
    # A shard is closed once adding the next clip would pass this size ("256MB", "1GiB" or bytes).
    target_size: ByteSize = ByteSize(256_000_000)
    # Extra rules on manifest columns on top of `kept`, e.g. "aesthetic_score >= 5".
    rules: list[str] = []
    # Resolution buckets by short side: a clip goes to the largest one not above its short side.
    resolutions: list[int] = [144, 240, 360, 480, 720, 1080, 1440, 2160]
    # Aspect-ratio buckets (width:height): a clip goes to the nearest one.
    aspect_ratios: list[str] = ["1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16", "21:9", "9:21"]
    # Frame-count buckets are ranges of this many frames: frames_0_255, frames_256_511, ...
    frames_per_bucket: int = Field(256, ge=1)
    # Encoding of reference windows (clip files are copied byte for byte).
    crf: int = Field(18, ge=0, le=51)
    preset: str = "veryfast"
    # Clips encoded concurrently (FFmpeg releases the GIL while it encodes).
    workers: int = Field(2, ge=1)
    s3: S3Config = S3Config()

    @field_validator("rules")
    @classmethod
    def _rules(cls, rules: list[str]) -> list[str]:
        from filters.filter import normalise_rule

        return [normalise_rule(r) for r in rules]

    @field_validator("aspect_ratios")
    @classmethod
    def _ratios(cls, ratios: list[str]) -> list[str]:
        for r in ratios:
            w, _, h = r.partition(":")
            if not (w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
                raise ValueError(f"aspect ratio '{r}' is not of the form W:H")
        return ratios


def bucket_of(row: dict, cfg: ShardConfig) -> str:
    """`resolution_R/aspect_ratio_W_H/frames_A_B` for a clip's width, height and frame count."""
    w, h, n = int(row["width"]), int(row["height"]), int(row["num_frames"])
    res = sorted(cfg.resolutions)
    short = min(w, h)
    r = max([x for x in res if x <= short], default=res[0])

    def distance(ratio: str) -> float:
        a, _, b = ratio.partition(":")
        return abs(math.log(int(a) / int(b)) - math.log(w / h))

    ar = min(cfg.aspect_ratios, key=distance).replace(":", "_")
    lo = n // cfg.frames_per_bucket * cfg.frames_per_bucket
    return f"resolution_{r}/aspect_ratio_{ar}/frames_{lo}_{lo + cfg.frames_per_bucket - 1}"


def read_manifest(output: str, s3: S3Config | None = None) -> pa.Table:
    """The clips manifest of a pipeline OUTPUT (local or s3://): every committed part.

    A clips part counts once its videos part exists (the writer commits videos last), so a
    manifest still being written, or left by a killed run, never yields half a video.
    """
    from curate.manifest import CLIPS_DIR, committed_parts, scan

    store = Store(output, s3)
    names = committed_parts(store)
    if not names:
        raise FileNotFoundError(f"{output}: no committed clips manifest parts under {CLIPS_DIR}/")
    return pa.concat_tables(scan(store, CLIPS_DIR, parts=names), promote_options="permissive")


def select_clips(table: pa.Table, rules: list[str]) -> list[dict]:
    """Kept clips that also pass `rules`, without transient columns, sorted by clip id."""
    from filters.filter import apply_rules

    keep = [c for c in table.column_names if c not in TRANSIENT_NAMES]
    rows = [r for r in table.select(keep).to_pylist() if r.get("clip_id") and r.get("kept")]
    if rules:
        checked = apply_rules([{**r, "filter_reasons": []} for r in rows], rules)
        rows = [r for r, c in zip(rows, checked) if c["kept"]]
    return sorted(rows, key=lambda r: r["clip_id"])


def _json_default(value):
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def _clean(value):
    """NaN is not JSON; a missing score is null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def sample_members(row: dict, cfg: ShardConfig, tmpdir: str) -> dict[str, bytes]:
    """The three tar members of one clip."""
    clip = clip_file(row)
    with local_copy(clip or row["source_uri"], cfg.s3) as path:
        if clip:
            mp4 = Path(path).read_bytes()
        else:
            mp4 = cut_window(path, row, cfg, os.path.join(tmpdir, f"{row['clip_id']}.mp4"))
    meta = json.dumps(_clean(row), default=_json_default, sort_keys=True).encode("utf-8")
    return {"mp4": mp4, "json": meta, "txt": (row.get("caption") or "").encode("utf-8")}


def cut_window(source: str, row: dict, cfg: ShardConfig, tmp_path: str) -> bytes:
    """A reference clip's window re-encoded as a standalone mp4 at its displayed size (upright, square
    pixels) and the source's presentation times."""
    from curate.window import WindowReader, write_clip

    with WindowReader(source, row.get("stream_index"), row.get("pts_offset_s")) as reader:
        got = write_clip(reader, float(row["start_s"]), float(row["end_s"]), tmp_path, crf=cfg.crf, preset=cfg.preset)
    if got["num_frames"] != int(row["num_frames"]):
        raise ValueError(
            f"clip {row['clip_id']}: decoded {got['num_frames']} of its {row['num_frames']} frames "
            f"in [{row['start_s']:.3f}, {row['end_s']:.3f}) s"
        )
    try:
        return Path(tmp_path).read_bytes()
    finally:
        os.remove(tmp_path)


def _ordered_map(fn: Callable, items: list, workers: int) -> Iterator:
    """fn over items on a thread pool, results in order, at most 2*workers in flight."""
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class _TarShards:
    """Writes one bucket's shards in order, closing each once it reaches the target size."""

    def __init__(self, store: Store, bucket: str, target_size: int, tmpdir: str):
        self.store, self.bucket, self.target = store, bucket, target_size
        self.local = os.path.join(tmpdir, bucket.replace("/", "__") + ".tar")
        self.count = 0
        self.tar: tarfile.TarFile | None = None
        self.written: list[str] = []

    def add(self, key: str, members: dict[str, bytes]) -> dict:
        size = sum(512 + math.ceil(len(b) / 512) * 512 for b in members.values())
        if self.tar is not None and self.tar.offset + size > self.target:
            self.close()  # a shard always takes its first clip, however large
        if self.tar is None:
            self.tar = tarfile.open(self.local, "w", format=tarfile.USTAR_FORMAT)
        shard = f"{self.bucket}/shard-{self.count:06d}.tar"
        loc = {"shard": shard, "key": key, "bucket": self.bucket}
        for ext in MEMBERS:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mode, info.mtime = len(members[ext]), 0o644, 0
            self.tar.addfile(info, io.BytesIO(members[ext]))
            # The data sits just before the tar's write position, padded to a 512-byte block.
            loc[f"{ext}_offset"] = self.tar.offset - math.ceil(info.size / 512) * 512
            loc[f"{ext}_size"] = info.size
        return loc

    def close(self) -> None:
        if self.tar is None:
            return
        self.tar.close()
        rel = f"{self.bucket}/shard-{self.count:06d}.tar"
        self.store.upload_file(rel, self.local)
        os.remove(self.local)
        self.written.append(rel)
        self.tar, self.count = None, self.count + 1


def write_shards(output_dir: str, shard_cfg: ShardConfig | dict | None = None) -> dict:
    """Shard the kept clips of a finished pipeline OUTPUT; returns counts for the log.

    The manifest is streamed a committed part at a time: each clip goes to its bucket's open shard
    (one tar per bucket on local disk, uploaded when full) and its index row is appended to
    index.parquet as it goes, so memory holds a part and the open shards, however many clips.
    Re-running replaces the previous shards: shards of the old index that the new run did not
    write again are deleted once the new index is committed.
    """
    from curate import manifest

    cfg = shard_cfg if isinstance(shard_cfg, ShardConfig) else ShardConfig.model_validate(shard_cfg or {})
    out = cfg.out or output_dir.rstrip("/") + "/shards"
    store = Store(out, cfg.s3)
    source = Store(output_dir, cfg.s3)
    parts = manifest.committed_parts(source)
    if not parts:
        raise FileNotFoundError(f"{output_dir}: no committed clips manifest parts under {manifest.CLIPS_DIR}/")
    old = _old_shards(store)
    writers: dict[str, _TarShards] = {}
    clips = 0
    with tempfile.TemporaryDirectory(prefix="curate-shard-") as tmpdir:
        index_path = os.path.join(tmpdir, "index.parquet")
        index = None
        for table in manifest.scan(source, manifest.CLIPS_DIR, None, parts):
            rows = select_clips(table, cfg.rules)
            if not rows:
                continue
            if index is None:
                schema = _index_schema(table.schema)
                index = pq.ParquetWriter(index_path, schema)
            locs = []
            for row, sample in zip(rows, _ordered_map(lambda r: sample_members(r, cfg, tmpdir), rows, cfg.workers)):
                bucket = bucket_of(row, cfg)
                writer = writers.get(bucket) or writers.setdefault(bucket, _TarShards(store, bucket, int(cfg.target_size), tmpdir))
                locs.append({**row, **writer.add(row["clip_id"], sample)})
            index.write_table(pa.Table.from_pylist(locs, schema=schema))
            clips += len(locs)
        written = []
        for bucket in sorted(writers):
            writers[bucket].close()
            written += writers[bucket].written
        if index is None:
            index = pq.ParquetWriter(index_path, _index_schema(pa.schema(CLIP_FIELDS)))
        index.close()
        store.upload_file("index.parquet", index_path)
    for rel in sorted(set(old) - set(written)):
        store.delete(rel)
    return {"clips": clips, "shards": len(written), "buckets": len(writers), "out": out}


def _index_schema(manifest: pa.Schema) -> pa.Schema:
    fields = [f for f in manifest if f.name not in TRANSIENT_NAMES]
    fields += [pa.field("shard", pa.string()), pa.field("key", pa.string()), pa.field("bucket", pa.string())]
    for ext in MEMBERS:
        fields += [pa.field(f"{ext}_offset", pa.int64()), pa.field(f"{ext}_size", pa.int64())]
    return pa.schema(fields)


def _old_shards(store: Store) -> list[str]:
    try:
        data = store.read_bytes("index.parquet")
    except Exception:  # no previous index (missing file or S3 NoSuchKey)
        return []
    return sorted(set(pq.read_table(io.BytesIO(data), columns=["shard"]).column("shard").to_pylist()))


def read_index(shards_dir: str, s3: S3Config | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(Store(shards_dir, s3).read_bytes("index.parquet")))


def read_member(shards_dir: str, row: dict, ext: str, s3: S3Config | None = None) -> bytes:
    """One member of one sharded clip, by a range read at its indexed offset."""
    uri = f"{shards_dir.rstrip('/')}/{row['shard']}"
    offset, size = int(row[f"{ext}_offset"]), int(row[f"{ext}_size"])
    if is_s3(uri):
        return read_s3(uri, s3 or S3Config(), (offset, offset + size - 1))
    with open(uri, "rb") as f:
        f.seek(offset)
        return f.read(size)


def shard_urls(shards_dir: str, s3: S3Config | None = None) -> list[str]:
    """Every shard of a shard directory, e.g. for `webdataset.WebDataset(urls)`."""
    shards = sorted(set(read_index(shards_dir, s3).column("shard").to_pylist()))
    return [f"{shards_dir.rstrip('/')}/{s}" for s in shards]
