"""Clip records to Arrow tables and back: sampled frames keep their bytes, shapes and nulls through
the ways Ray Data hands blocks on (slices, combined chunks, pickling)."""

import pickle

import numpy as np
import pyarrow as pa

from curate.record import ARRAY_TYPE, from_table, to_table

SCHEMA = pa.schema([pa.field("clip_id", pa.string()), pa.field("frames", ARRAY_TYPE), pa.field("motion_frames", ARRAY_TYPE)])


def _rows():
    rng = np.random.default_rng(0)
    return [
        {"clip_id": "a", "frames": rng.integers(0, 256, (3, 6, 8, 3), dtype=np.uint8), "motion_frames": None},
        {"clip_id": "b", "frames": None, "motion_frames": np.zeros((0, 4, 4), np.uint8)},
        {"clip_id": "c", "frames": rng.integers(0, 256, (1, 2, 2, 3), dtype=np.uint8),
         "motion_frames": rng.integers(0, 256, (5, 4, 6), dtype=np.uint8)},
    ]


def _same(got: list[dict], want: list[dict]) -> None:
    assert [r["clip_id"] for r in got] == [r["clip_id"] for r in want]
    for g, w in zip(got, want):
        for name in ("frames", "motion_frames"):
            if w.get(name) is None:
                assert g[name] is None
            else:
                assert g[name].dtype == np.uint8 and g[name].shape == w[name].shape
                assert np.array_equal(g[name], w[name])


def test_frames_survive_slices_combined_chunks_and_pickling():
    rows = _rows()
    table = to_table(rows, SCHEMA)
    assert table.schema == SCHEMA
    _same(from_table(table), rows)
    _same(from_table(table.slice(1)), rows[1:])
    _same(from_table(table.combine_chunks().slice(1, 1)), rows[1:2])
    _same(from_table(pickle.loads(pickle.dumps(table))), rows)
    _same(from_table(pa.concat_tables([table.slice(2), table.slice(0, 1)])), [rows[2], rows[0]])


def test_arrays_read_back_are_views_not_copies():
    table = to_table(_rows(), SCHEMA)
    frames = from_table(table)[0]["frames"]
    assert not frames.flags.writeable  # a view of the table's buffer: a stage must not write into it
    assert not frames.flags.owndata
