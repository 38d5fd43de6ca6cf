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


def _array_column(values: list) -> pa.ChunkedArray:
    """An ARRAY_TYPE column (uint8 bytes and shape) from arrays or None: one chunk per row, each
    wrapping its array's own memory (no copy here; Ray copies blocks into its object store once)."""
    chunks = []
    for v in values:
        a = np.empty(0, np.uint8) if v is None else np.ascontiguousarray(v, dtype=np.uint8)
        data = pa.Array.from_buffers(pa.binary(), 1, [None, pa.py_buffer(np.array([0, a.nbytes], np.int32)), pa.py_buffer(a)])
        shape = pa.array([None if v is None else list(a.shape)], pa.list_(pa.int32()))
        chunks.append(pa.StructArray.from_arrays([data, shape], fields=list(ARRAY_TYPE), mask=pa.array([v is None])))
    return pa.chunked_array(chunks, ARRAY_TYPE)


def _arrays(column: pa.ChunkedArray) -> list:
    """The arrays of an ARRAY_TYPE column (read-only views of its buffers, no copy) or None."""
    out: list = []
    for chunk in column.chunks:
        data, shapes = chunk.flatten()  # children with the struct's offset and nulls applied
        offsets = np.frombuffer(data.buffers()[1], np.int32)[data.offset : data.offset + len(data) + 1]
        buf = data.buffers()[2]  # None when every row is empty
        values = np.frombuffer(buf, np.uint8) if buf is not None else np.empty(0, np.uint8)
        values.flags.writeable = False  # the table's memory, perhaps shared with other blocks
        for i, (valid, shape) in enumerate(zip(chunk.is_valid().to_pylist(), shapes.to_pylist())):
            out.append(values[offsets[i] : offsets[i + 1]].reshape(shape) if valid else None)
    return out


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (with unpacked arrays) to an Arrow table of exactly `schema`; missing keys become nulls,
    except in COLLECTION_COLUMNS, where they become empty lists. Array columns are built from the
    arrays' buffers (a Python bytes object per frame cost a second copy and most of the time)."""
    collections = [n for n in schema.names if n in COLLECTION_COLUMNS]
    arrays = [n for n in schema.names if n in ARRAY_COLUMNS]
    packed = []
    for r in rows:
        p = {k: v for k, v in r.items() if k not in ARRAY_COLUMNS}
        for name in collections:
            if p.get(name) is None:
                p[name] = []
        packed.append(p)
    table = pa.Table.from_pylist(packed, schema=pa.schema([f for f in schema if f.name not in ARRAY_COLUMNS]))
    for name in arrays:
        values = [r.get(name) for r in rows]
        if any(v is not None and not isinstance(v, np.ndarray) for v in values):
            raise TypeError(f"{name}: expected numpy arrays or None")
        table = table.add_column(schema.get_field_index(name), schema.field(name), _array_column(values))
    return table


def from_table(table: pa.Table) -> list[dict]:
    """Rows of a table; array columns become read-only numpy views of the table's buffers."""
    arrays = [n for n in table.column_names if n in ARRAY_COLUMNS]
    rows = table.drop_columns(arrays).to_pylist()
    for name in arrays:
        for r, a in zip(rows, _arrays(table.column(name))):
            r[name] = a
    return rows


def clip_schema(stage_fields: list[pa.Field], transient: bool = True) -> pa.Schema:
    fields = list(CLIP_FIELDS) + list(stage_fields)
    if transient:
        fields += TRANSIENT_FIELDS
    return pa.schema(fields)
