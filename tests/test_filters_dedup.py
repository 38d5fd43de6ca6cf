import numpy as np
import pyarrow as pa
import pytest

from curate.record import clip_schema
from filters.dedup import DedupStage, similar_pairs

SCHEMA = clip_schema(
    [
        pa.field("clip_embedding", pa.list_(pa.float32())),
        pa.field("aesthetic_score", pa.float64()),
        pa.field("motion_score", pa.float64()),
        pa.field("duplicate_of", pa.string()),
    ],
    transient=False,
)


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def near(v, eps, seed):
    """A unit vector at cosine about 1 - eps^2/2 from v."""
    noise = np.random.default_rng(seed).standard_normal(len(v)).astype(np.float32)
    noise -= noise.dot(v) * v
    return unit(v + eps * unit(noise))


def table(rows):
    base = {"video_id": "v", "kept": True, "filter_reasons": []}
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=SCHEMA)


@pytest.fixture
def rows():
    rng = np.random.default_rng(0)
    a, b = unit(rng.standard_normal(64)), unit(rng.standard_normal(64))
    return [
        {"clip_id": "a1", "clip_embedding": a, "aesthetic_score": 5.0},
        {"clip_id": "a2", "clip_embedding": near(a, 0.1, 1), "aesthetic_score": 6.0},  # best of group a
        {"clip_id": "a3", "clip_embedding": near(a, 0.1, 2), "aesthetic_score": 4.0},
        {"clip_id": "b1", "clip_embedding": b, "aesthetic_score": 3.0},
        {"clip_id": "b2", "clip_embedding": near(b, 0.6, 3), "aesthetic_score": 7.0},  # cosine ~0.85: distinct
        {"clip_id": "x", "clip_embedding": None, "aesthetic_score": 9.0},
    ]


def test_groups_keep_the_best_scored_clip(rows):
    out = DedupStage().process_manifest(table(rows))
    assert out["duplicate_of"].to_pylist() == ["a2", None, "a2", None, None, None]
    # score-only: nothing dropped
    assert out["kept"].to_pylist() == [True] * 6


def test_filter_mode_drops_duplicates_with_a_reason(rows):
    rows[0]["filter_reasons"] = []
    out = DedupStage(mode="filter").process_manifest(table(rows))
    assert out["kept"].to_pylist() == [False, True, False, True, True, True]
    assert out["filter_reasons"].to_pylist()[:3] == [["duplicate_of a2"], [], ["duplicate_of a2"]]


def test_threshold_is_configurable(rows):
    out = DedupStage(threshold=0.8).process_manifest(table(rows))
    assert out["duplicate_of"].to_pylist() == ["a2", None, "a2", "b2", None, None]


def test_fallback_score_and_clip_id_ties(rows):
    for r in rows:
        r.pop("aesthetic_score")
        r["motion_score"] = 1.0
    rows[2]["motion_score"] = 2.0
    out = DedupStage().process_manifest(table(rows).drop_columns(["aesthetic_score"]))
    assert out["duplicate_of"].to_pylist()[:3] == ["a3", "a3", None]
    rows[2]["motion_score"] = 1.0
    out = DedupStage().process_manifest(table(rows).drop_columns(["aesthetic_score"]))
    assert out["duplicate_of"].to_pylist()[:3] == [None, "a1", "a1"]  # equal scores: lowest clip_id keeps


def test_deterministic_under_row_order_and_idempotent(rows):
    stage = DedupStage(mode="filter")
    first = stage.process_manifest(table(rows))
    shuffled = stage.process_manifest(table(rows[::-1]))
    by_id = lambda t: dict(zip(t["clip_id"].to_pylist(), zip(t["duplicate_of"].to_pylist(), t["kept"].to_pylist())))
    assert by_id(first) == by_id(shuffled)
    again = stage.process_manifest(first)
    assert again.equals(first)


def test_filtered_clips_are_not_candidates(rows):
    rows[1]["kept"] = False
    rows[1]["filter_reasons"] = ["aesthetic_score >= 8"]
    out = DedupStage().process_manifest(table(rows))
    assert out["duplicate_of"].to_pylist()[:3] == [None, None, "a1"]


def test_blockwise_pairs_match_the_full_matrix():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((20, 16)).astype(np.float32)
    e = np.concatenate([base, base + 0.05 * rng.standard_normal((20, 16)).astype(np.float32)])
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    full = similar_pairs(e, 0.9, block=len(e))
    small = similar_pairs(e, 0.9, block=7)
    assert [list(a) for a in full] == [list(b) for b in small]
    assert all(i + 20 in full[i] for i in range(20))


def test_embeddings_of_different_sizes_are_refused(rows):
    rows[1]["clip_embedding"] = rows[1]["clip_embedding"][:32]
    with pytest.raises(ValueError, match="different models"):
        DedupStage().process_manifest(table(rows))
