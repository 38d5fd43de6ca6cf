"""Semantic dedup on committed manifest parts: the keeper rule, exact and k-means methods, recall,
determinism, resume, and the same result in this process and on Ray tasks."""

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from dedup_data import SCHEMA, Corpus, write_part

from curate import manifest
from curate.storage import Store
from filters import kmeans
from filters.dedup import SCRATCH, DedupStage, similar_pairs


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def near(v, eps, seed):
    """A unit vector at cosine about 1 - eps^2/2 from v."""
    noise = np.random.default_rng(seed).standard_normal(len(v)).astype(np.float32)
    noise -= noise.dot(v) * v
    return unit(v + eps * unit(noise))


def commit(tmp_path, rows, per_part=2, drop=()):
    """`rows` as committed parts of `per_part` rows each; returns the Store."""
    store = Store(str(tmp_path / "out"))
    schema = pa.schema([f for f in SCHEMA if f.name not in drop])
    base = {"video_id": "v", "kept": True, "filter_reasons": []}
    for i in range(0, len(rows), per_part):
        write_part(store, f"part-{i:05d}.parquet", pa.Table.from_pylist([{**base, **r} for r in rows[i : i + per_part]], schema=schema))
    return store


def result(store, column="duplicate_of"):
    t = pads.dataset(store.uri("clips")).to_table()
    return dict(zip(t["clip_id"].to_pylist(), t[column].to_pylist()))


def column(store, ids, name="duplicate_of"):
    r = result(store, name)
    return [r[i] for i in ids]


IDS = ["a1", "a2", "a3", "b1", "b2", "x"]


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


@pytest.mark.parametrize("method", ["exact", "kmeans"])
def test_groups_keep_the_best_scored_clip_across_parts(tmp_path, rows, method):
    store = commit(tmp_path, rows)
    stats = DedupStage(method=method, cluster_size=2).process_manifest(store)
    assert column(store, IDS) == ["a2", None, "a2", None, None, None]
    assert column(store, IDS, "kept") == [True] * 6  # score-only: nothing dropped
    assert (stats.candidates, stats.pairs, stats.duplicates, stats.parts) == (5, 3, 2, 3)
    assert not os.path.exists(store.uri(SCRATCH))


def test_filter_mode_drops_duplicates_with_a_reason(tmp_path, rows):
    store = commit(tmp_path, rows)
    DedupStage(mode="filter").process_manifest(store)
    assert column(store, IDS, "kept") == [False, True, False, True, True, True]
    assert column(store, IDS, "filter_reasons")[:3] == [["duplicate_of a2"], [], ["duplicate_of a2"]]


def test_threshold_is_configurable(tmp_path, rows):
    store = commit(tmp_path, rows)
    DedupStage(threshold=0.8).process_manifest(store)
    assert column(store, IDS) == ["a2", None, "a2", "b2", None, None]


def test_fallback_score_and_clip_id_ties(tmp_path, rows):
    for r in rows:
        r.pop("aesthetic_score")
        r["motion_score"] = 1.0
    rows[2]["motion_score"] = 2.0
    store = commit(tmp_path / "1", rows, drop={"aesthetic_score"})
    DedupStage().process_manifest(store)
    assert column(store, IDS)[:3] == ["a3", "a3", None]
    rows[2]["motion_score"] = 1.0
    store = commit(tmp_path / "2", rows, drop={"aesthetic_score"})
    DedupStage().process_manifest(store)
    assert column(store, IDS)[:3] == [None, "a1", "a1"]  # equal scores: lowest clip_id keeps


def test_filtered_clips_are_not_candidates(tmp_path, rows):
    rows[1]["kept"] = False
    rows[1]["filter_reasons"] = ["aesthetic_score >= 8"]
    store = commit(tmp_path, rows)
    DedupStage().process_manifest(store)
    assert column(store, IDS)[:3] == [None, None, "a1"]


def test_rerun_and_other_layouts_give_the_same_result(tmp_path, rows):
    stage = DedupStage(mode="filter")
    store = commit(tmp_path / "1", rows, per_part=2)
    stage.process_manifest(store)
    first = {c: result(store, c) for c in ("duplicate_of", "kept", "filter_reasons")}
    assert stage.process_manifest(store).rewritten == 0  # idempotent: nothing to write
    other = commit(tmp_path / "2", rows[::-1], per_part=4)
    stage.process_manifest(other)
    assert {c: result(other, c) for c in first} == first
    # Another threshold replaces the earlier decisions instead of adding to them.
    DedupStage(mode="filter", threshold=0.8).process_manifest(store)
    assert result(store, "filter_reasons")["b1"] == ["duplicate_of b2"]
    stage.process_manifest(store)
    assert {c: result(store, c) for c in first} == first


def test_embeddings_of_different_sizes_are_refused_and_nothing_changes(tmp_path, rows):
    rows[4]["clip_embedding"] = rows[4]["clip_embedding"][:32]
    store = commit(tmp_path, rows)
    before = {n: open(store.uri(f"clips/{n}"), "rb").read() for n in manifest.committed_parts(store)}
    with pytest.raises(ValueError, match="different models"):
        DedupStage().process_manifest(store)
    assert {n: open(store.uri(f"clips/{n}"), "rb").read() for n in before} == before
    assert not os.path.exists(store.uri(SCRATCH))


def test_only_committed_parts_count_and_stale_scratch_goes(tmp_path, rows):
    store = commit(tmp_path, rows)
    store.delete("videos/part-00004.parquet")  # a run killed between its two writes: b2 never committed
    store.write_bytes(f"{SCRATCH}/dead/assign/t00000/g000000.parquet", b"left by a killed dedup")
    stats = DedupStage(threshold=0.8).process_manifest(store)
    assert (stats.parts, stats.candidates) == (2, 4)
    assert column(store, IDS[:4]) == ["a2", None, "a2", None]  # b1 is not claimed by the uncommitted b2
    assert not os.path.exists(store.uri(SCRATCH))


def test_tiled_pairs_match_the_full_matrix():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((20, 16)).astype(np.float32)
    e = np.concatenate([base, base + 0.05 * rng.standard_normal((20, 16)).astype(np.float32)])
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    full = sorted(zip(*similar_pairs(e, None, 0.9, block=len(e))[:2]))
    assert sorted(zip(*similar_pairs(e, None, 0.9, block=7)[:2])) == full
    assert all((i, i + 20) in full for i in range(20)) and all(i < j for i, j in full)
    cross = sorted(zip(*similar_pairs(e[:20], e[20:], 0.9, block=6)[:2]))
    assert [(i, j + 20) for i, j in cross] == [(i, j) for i, j in full if i < 20 <= j]


@pytest.mark.parametrize("method", ["exact", "kmeans"])
def test_pairs_at_the_threshold_are_decided_in_full_precision(tmp_path, method):
    """Scratch holds half-precision copies; pairs within their rounding of the threshold are
    decided from the manifest's float32 embeddings, so the result is the float32 one."""
    rng = np.random.default_rng(5)
    rows = []
    for g, delta in enumerate([-5e-6, -2e-6, 2e-6, 5e-6] * 6):
        a, noise = unit(rng.standard_normal(768)), unit(rng.standard_normal(768))
        noise = unit(noise - noise.dot(a) * a)
        cos = 0.95 + delta  # b at exactly this cosine to a, up to float32 rounding
        b = unit(cos * a + np.sqrt(1 - cos**2) * noise)
        rows += [{"clip_id": f"g{g:02d}a", "clip_embedding": a, "aesthetic_score": 2.0},
                 {"clip_id": f"g{g:02d}b", "clip_embedding": b, "aesthetic_score": 1.0}]
    store = commit(tmp_path, rows, per_part=5)
    stats = DedupStage(method=method, cluster_size=8, probes=3).process_manifest(store)
    e = np.stack([r["clip_embedding"] for r in rows])
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    want = {rows[2 * g + 1]["clip_id"]: rows[2 * g]["clip_id"] for g in range(24) if e[2 * g] @ e[2 * g + 1] >= 0.95}
    assert len(want) == 12 and stats.checked >= 12
    assert {k: v for k, v in result(store).items() if v} == want


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """8 parts of 1500 clips (12k, 768-d), about 1300 planted duplicates, many across parts."""
    return Corpus(parts=8, rows=1500, seed=3).commit(tmp_path_factory.mktemp("corpus"))


def copy_of(corpus, dest):
    import shutil

    shutil.copytree(corpus, dest)
    return Store(str(dest))


def test_kmeans_recall_against_exact(corpus, tmp_path):
    exact_store, km_store = copy_of(corpus, tmp_path / "exact"), copy_of(corpus, tmp_path / "kmeans")
    exact = DedupStage(method="exact").process_manifest(exact_store)
    km = DedupStage(method="kmeans", cluster_size=200).process_manifest(km_store)
    assert km.clusters >= 50 and exact.pairs > 2000
    # Every pair k-means reports was checked against the threshold, so its pairs are a subset of exact's.
    assert km.pairs / exact.pairs >= 0.99, (km.pairs, exact.pairs)
    assert km.compared < exact.compared / 5
    a, b = result(exact_store), result(km_store)
    assert sum(a[i] != b[i] for i in a) <= 0.01 * exact.duplicates


def test_kmeans_is_deterministic_for_a_seed(corpus, tmp_path):
    runs = []
    for name in ("a", "b"):
        store = copy_of(corpus, tmp_path / name)
        stats = DedupStage(cluster_size=200).process_manifest(store)
        runs.append((result(store), stats.compared, stats.clusters))
    assert runs[0] == runs[1]
    sample = Corpus(parts=1, rows=2000, seed=5).embeddings(0)
    same, again, other = (kmeans.train(sample, 20, seed).fine for seed in (0, 0, 1))
    assert np.array_equal(same, again) and not np.array_equal(same, other)


def test_nearest_clusters_are_the_flat_search_when_every_cell_is_searched():
    x = Corpus(parts=1, rows=2000, seed=7).embeddings(0)
    clusters = kmeans.train(x, 60, 0)
    flat = np.argsort(-(x[:500] @ clusters.fine.T), axis=1, kind="stable")[:, :5]
    assert np.array_equal(kmeans.nearest(clusters, x[:500], 5, coarse_probes=len(clusters.coarse), chunk=128), flat)
    # Fewer candidates in the searched cells than probes: the rest is -1, the found ones still nearest first.
    one_cell = kmeans.nearest(clusters, x[:50], clusters.k, coarse_probes=1)
    width = np.diff(clusters.start)
    assert ((one_cell >= 0).sum(axis=1) == width[np.searchsorted(clusters.start, one_cell[:, 0], side="right") - 1]).all()
    assert (one_cell[:, -1] == -1).all() and (one_cell[:, 0] == flat[:50, 0]).mean() > 0.9


def test_ray_tasks_give_the_same_result_as_one_process(corpus, tmp_path, ray_session):
    local = copy_of(corpus, tmp_path / "local")
    code = f"""
from curate.storage import Store
from filters.dedup import DedupStage
print(DedupStage(cluster_size=200, mode="filter").process_manifest(Store({local.root!r})).__dict__)
"""
    # A fresh interpreter without Ray: every step runs in that process.
    in_process = eval(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    distributed = copy_of(corpus, tmp_path / "ray")
    on_ray = DedupStage(cluster_size=200, mode="filter").process_manifest(distributed)
    assert on_ray.worker_rss_mb > 0 and in_process["worker_rss_mb"] == 0, in_process
    assert (on_ray.pairs, on_ray.duplicates, on_ray.compared) == (in_process["pairs"], in_process["duplicates"], in_process["compared"]), in_process
    for c in ("duplicate_of", "kept", "filter_reasons"):
        assert result(distributed, c) == result(local, c)


def test_a_dedup_killed_while_writing_back_reruns_to_the_same_result(corpus, tmp_path):
    store = copy_of(corpus, tmp_path / "out")
    pristine = {n: open(store.uri(f"clips/{n}"), "rb").read() for n in manifest.committed_parts(store)}
    stage = DedupStage(cluster_size=200, mode="filter")
    stage.process_manifest(store)
    done = {c: result(store, c) for c in ("duplicate_of", "kept", "filter_reasons")}
    # Killed midway: some parts written back, the others still as before dedup.
    for n in sorted(pristine)[::2]:
        store.write_bytes(f"clips/{n}", pristine[n])
    stats = stage.process_manifest(store)
    assert stats.rewritten == len(sorted(pristine)[::2])
    assert {c: result(store, c) for c in done} == done


def test_small_tasks_and_scratch_in_waves_give_the_same_result(corpus, tmp_path):
    one, many = copy_of(corpus, tmp_path / "one"), copy_of(corpus, tmp_path / "many")
    whole = DedupStage(cluster_size=200).process_manifest(one)
    # ~2000 clips per pairwise task, at most ~3300 clips' embeddings in scratch at once
    waves = DedupStage(cluster_size=200, task_rows=2000, scratch_gb=0.01).process_manifest(many)
    assert whole.waves == 1 and waves.waves >= 4
    # Each clip's nearest clusters are searched once, in the first wave, and reused by the others.
    assert waves.searched == whole.searched == whole.candidates
    assert waves.copies > whole.copies  # a clip joins more (smaller) tasks
    assert (waves.pairs, waves.duplicates) == (whole.pairs, whole.duplicates)
    assert result(many) == result(one)
