"""The clip record: the one row that flows through every stage, and the manifest schemas.

A record is a plain dict. The splitter emits one per clip; a video that yields no clip (an error,
or every scene too short) still emits one *video-only* record with ``clip_id = None`` so that its
videos-manifest row reaches the writer. Stages never see video-only records: the engine routes
them around ``process_batch``.

Frame arrays travel between Ray workers packed as ``{"data": bytes, "shape": [...]}`` structs
(uint8 only), which keeps every block a plain Arrow table whatever the frame size.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

# Columns of OUTPUT/videos, measured by the decode pass (curate.split): `duration_s` from the first
# frame's PTS to the end of the last frame, `fps` the average (frames / duration), `vfr` whether frame
# intervals vary, `width`/`height`/`aspect_ratio` as displayed (SAR and rotation applied), `sar` as
# stored, `pts_offset_s` the first frame's PTS in the file's timeline, `stream_index` the movie stream.
# `scenes` are [start_frame, end_frame) pairs as detected, before shaping.
VIDEO_FIELDS: list[pa.Field] = [
    pa.field("video_id", pa.string()),
    pa.field("source_uri", pa.string()),
    pa.field("status", pa.string()),
    pa.field("error", pa.string()),
    pa.field("duration_s", pa.float64()),
    pa.field("fps", pa.float64()),
    pa.field("vfr", pa.bool_()),
    pa.field("num_frames", pa.int64()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("aspect_ratio", pa.float64()),
    pa.field("sar", pa.string()),
    pa.field("codec", pa.string()),
    pa.field("rotation", pa.int32()),
    pa.field("pts_offset_s", pa.float64()),
    pa.field("stream_index", pa.int32()),
    pa.field("scenes", pa.list_(pa.list_(pa.int64()))),
    pa.field("num_clips", pa.int64()),
]
VIDEO_SCHEMA = pa.schema(VIDEO_FIELDS)

# Base columns of OUTPUT/clips; every stage appends the columns it declares in `Stage.outputs()`.
# The clip contract (README "Reading a clip"): `clip_uri` is the clip's own file, null until one
# exists (mp4 mode); without one the clip is a window of `source_uri`. `path` names the media the
# row describes (clip_uri if set, else source_uri), and `num_frames`, `fps`, `width`, `height`,
# `aspect_ratio`, `duration_s` describe that media. `start_s`/`end_s` always locate the clip in its
# source: presentation times in seconds from the video stream's first frame (the frames whose PTS
# lies in [pts_offset_s + start_s, pts_offset_s + end_s) of stream `stream_index`);
# `start_frame`/`end_frame` count the source's presented frames from 0.
CLIP_FIELDS: list[pa.Field] = [
    pa.field("clip_id", pa.string()),
    pa.field("video_id", pa.string()),
    pa.field("source_uri", pa.string()),
    pa.field("path", pa.string()),
    pa.field("clip_uri", pa.string()),
    pa.field("start_s", pa.float64()),
    pa.field("end_s", pa.float64()),
    pa.field("start_frame", pa.int64()),
    pa.field("end_frame", pa.int64()),
    pa.field("num_frames", pa.int64()),
    pa.field("fps", pa.float64()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("aspect_ratio", pa.float64()),
    pa.field("duration_s", pa.float64()),
    pa.field("pts_offset_s", pa.float64()),
    pa.field("stream_index", pa.int32()),
    pa.field("kept", pa.bool_()),
    pa.field("filter_reasons", pa.list_(pa.string())),
]
# `stage: Type: message` for every stage that failed on the clip (engine.StageRunner); after the
# base columns, before every stage's own.
ERRORS_FIELD = pa.field("errors", pa.list_(pa.string()))
# List columns that hold a collection (the rules a clip failed, the stages that failed on it, the
# scenes detected): empty, never null, so `len(errors) = 0` selects the clean rows in SQL, polars or
# pandas. A vector column (`clip_embedding`) stays null where it was not computed.
COLLECTION_COLUMNS = frozenset({"filter_reasons", "errors", "scenes"})

ARRAY_TYPE = pa.struct([pa.field("data", pa.binary()), pa.field("shape", pa.list_(pa.int32()))])

# In-flight only; dropped before manifests are written.
TRANSIENT_FIELDS: list[pa.Field] = [
    pa.field("video", pa.struct(VIDEO_FIELDS)),
    # On the video-only record: how many clip records of this video were sent before it.
    pa.field("emitted_clips", pa.int64()),
    # K x H x W x 3 RGB frames sampled across the clip at `frames.size` (upright, square pixels), their
    # source frame numbers and presentation times (s, as start_s).
    pa.field("frames", ARRAY_TYPE),
    pa.field("frame_indices", pa.list_(pa.int64())),
    pa.field("frame_times", pa.list_(pa.float64())),
    # M x h x w full-range luma frames at about `frames.motion_fps`, their frame numbers and times.
    pa.field("motion_frames", ARRAY_TYPE),
    pa.field("motion_frame_indices", pa.list_(pa.int64())),
    pa.field("motion_frame_times", pa.list_(pa.float64())),
    # Per-frame CLIP image embeddings (K x D, one list per frame) and the model that made them, so
    # later CLIP stages reuse them instead of encoding the frames again.
    pa.field("frame_embeddings", pa.list_(pa.list_(pa.float32()))),
    pa.field("frame_embeddings_model", pa.string()),
    # Work spent on this record, per stage: the driver sums it for progress lines and summary.json
    # (carried in-band: no metrics actor, no call per batch).
    pa.field("busy", pa.list_(pa.struct([("stage", pa.string()), ("seconds", pa.float64()), ("frames", pa.int64())]))),
]
TRANSIENT_NAMES = {f.name for f in TRANSIENT_FIELDS}
# The sampled frames the decode pass keeps for the stages: it converts each only when a stage reads it.
SAMPLED_FRAMES = frozenset({"frames", "motion_frames"})
ARRAY_COLUMNS = {f.name for f in TRANSIENT_FIELDS if f.type == ARRAY_TYPE}


def video_id_for(uri: str) -> str:
    """Stable id from the source URI, so reruns and resumes name everything the same way."""
    return hashlib.sha1(uri.encode("utf-8")).hexdigest()[:16]


def clip_id_for(video_id: str, start_frame: int, end_frame: int) -> str:
    return f"{video_id}_{start_frame:08d}_{end_frame:08d}"


def clip_file(row: dict) -> str | None:
    """The clip's own file, or None when the clip is a window of `source_uri` (see CLIP_FIELDS).

    Manifests written before `clip_uri` existed name a clip file only in `path`: a `path` other
    than the source is that file."""
    if row.get("clip_uri"):
        return row["clip_uri"]
    path = row.get("path")
    return path if path and path != row["source_uri"] else None


def pack_array(a: np.ndarray | None) -> dict | None:
    if a is None:
        return None
    a = np.ascontiguousarray(a, dtype=np.uint8)
    return {"data": a.tobytes(), "shape": list(a.shape)}


def unpack_array(d: dict | None) -> np.ndarray | None:
    if d is None:
        return None
    return np.frombuffer(d["data"], dtype=np.uint8).reshape(d["shape"])


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (with unpacked arrays) to an Arrow table of exactly `schema`; missing keys become nulls,
    except in COLLECTION_COLUMNS, where they become empty lists."""
    collections = [n for n in schema.names if n in COLLECTION_COLUMNS]
    packed = []
    for r in rows:
        p = dict(r)
        for name in ARRAY_COLUMNS:
            v = p.get(name)
            if isinstance(v, np.ndarray):
                p[name] = pack_array(v)
        for name in collections:
            if p.get(name) is None:
                p[name] = []
        packed.append(p)
    return pa.Table.from_pylist(packed, schema=schema)


def from_table(table: pa.Table) -> list[dict]:
    rows = table.to_pylist()
    for r in rows:
        for name in ARRAY_COLUMNS:
            if name in r:
                r[name] = unpack_array(r[name])
    return rows


def clip_schema(stage_fields: list[pa.Field], transient: bool = True) -> pa.Schema:
    fields = list(CLIP_FIELDS) + list(stage_fields)
    if transient:
        fields += TRANSIENT_FIELDS
    return pa.schema(fields)
