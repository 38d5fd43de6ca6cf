"""Semantic dedup: near-duplicate clips by cosine similarity of their CLIP embeddings.

Runs once on the finished clips manifest. Candidates are the clips still kept that have an
embedding. The keeper rule: clips are visited best-scored first (`score_column`, else
`fallback_column`, ties by clip_id); an unclaimed clip keeps itself and claims every unclaimed clip
within `threshold` cosine of it. So each duplicate is directly similar to its keeper (no chaining
through intermediate clips), the keeper is the best clip of its group, and the result depends only
on which similar pairs were found.

Which pairs are looked at is the method: `exact` compares every pair (for small runs); `kmeans`
(SemDeDup; see filters/kmeans.py) clusters the candidates into about n / `cluster_size` clusters
and compares pairs only within the clusters of each clip's `probes` nearest centroids. Below
`cluster_size` candidates both are the same.

Nothing that grows with the manifest passes through the process that calls `process_manifest`:
every step is a Ray task when Ray is initialised (else it runs in this process, one part at a time),
reads parts column-selected and exchanges data through scratch files under the output
(`.dedup-scratch/`, deleted at the end and at the start):

1. scan (per part): candidates, embedding sizes, a training sample chosen by a hash of clip_id
2. train (kmeans): the two-level k-means on the sample; clusters packed into pairwise tasks of
   about `task_rows` clips
3. assign (per group of parts): each candidate's nearest clusters (searched once, kept in scratch
   when the pairwise tasks run in waves), one scratch file per pairwise task, embeddings in half
   precision
4. pairs (per pairwise task): the pairs at or above `threshold` inside each cluster (those within
   the rounding of half precision, MARGIN, marked)
5. resolve (one task, memory O(similar pairs)): the marked pairs decided from the parts' float32
   embeddings (each part holding one read once), then the keeper rule over every pair found
6. apply (per part): `duplicate_of` (and `kept`, `filter_reasons` in filter mode), one atomic
   rewrite per changed part

An earlier dedup of the same manifest is undone first (its `duplicate_of ...` reasons), so a rerun,
a resumed run or another threshold gives the same result as a first run.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import math
import resource
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from curate import manifest
from curate.config import S3Config
from curate.stage import GlobalStage
from curate.storage import Store
from filters import kmeans

SCRATCH = ".dedup-scratch"
REASON = "duplicate_of "
# Training vectors per fine centroid: faiss's floor for a meaningful k-means is 39.
SAMPLE_PER_CLUSTER = 40
# Sample clips whose nearest clusters size the pairwise tasks (the first in hash order). At 5M clips
# searching all 800,000 took a minute; 200,000 made 504 tasks, not 495, with 4.48 copies a clip,
# not 4.47, the largest 1% larger (bench/README.md, Dedup at scale).
SIZING_ROWS = 200_000
READ = ["clip_id", "kept", "filter_reasons", "clip_embedding"]
# Scratch holds embeddings in half precision (half the bytes written and read). Rounding a unit
# vector to float16 moves each component by at most u = 2^-11 of itself, so a cosine moves by at
# most 2u + u^2 (Cauchy-Schwarz; float16 subnormals and float32 sums add under 1e-4): a pair within
# MARGIN of the threshold is decided again from the manifest's float32 embeddings.
MARGIN = 2e-3


class DedupStage(GlobalStage):
    name: ClassVar[str] = "dedup"
    order: ClassVar[int] = 90

    threshold: float = Field(0.95, gt=0, le=1)
    score_column: str = "aesthetic_score"
    fallback_column: str = "motion_score"
    method: Literal["kmeans", "exact"] = "kmeans"
    # Mean clips per k-means cluster: pairwise work is about candidates * cluster_size * probes
    # * 0.7-1.2 (847 pairs a candidate at 100k, 1462 at 5M; bench/README.md).
    cluster_size: int = Field(250, ge=2)
    # Clusters each clip is compared in (its nearest centroids); 1 is SemDeDup's hard assignment.
    # 5 found >= 0.99 of the exact method's pairs on synthetic CLIP-like data (bench/README.md).
    probes: int = Field(5, ge=1)
    seed: int = Field(0, ge=0)
    # Clips one pairwise task holds (about task_rows * 4.5 KB at 768-d: the half-precision copies
    # and the float32 ones it multiplies); a
    # single cluster larger than this (or the whole set, for `exact`) is still one task.
    task_rows: int = Field(50_000, ge=1)
    block: int = Field(4096, ge=1)  # rows of one tile of the similarity matrix
    # Most GB of embeddings the assign step may hold in scratch at once (None: no limit). Each clip
    # is copied, in half precision, to every pairwise task it joins (3.4-4.5 copies at the
    # defaults: 1.7-2.3x the bytes of the float32 embeddings); past this
    # the pairwise tasks run in waves, and the parts are read once per wave.
    scratch_gb: float | None = Field(None, gt=0)

    def outputs(self) -> list[pa.Field]:
        return [pa.field("duplicate_of", pa.string())]

    def process_manifest(self, store: Store) -> DedupStats:
        t0 = time.perf_counter()
        tasks = _Tasks(store)
        names = manifest.committed_parts(store)
        stats = DedupStats(method=self.method, parts=len(names))
        store.delete_tree(SCRATCH)  # what a killed dedup left behind
        scratch = f"{SCRATCH}/{uuid.uuid4().hex[:8]}"
        job = (store.root, store.cfg, scratch, self)
        try:
            fraction = min(1.0, SAMPLE_PER_CLUSTER / self.cluster_size) if self.method == "kmeans" else 0.0
            rows, dims, columns = [], set(), set()
            for r in tasks.map(_scan, ((*job, i, n, fraction) for i, n in enumerate(names))):
                rows.append(r["rows"])
                stats.candidates += r["candidates"]
                dims |= r["dims"]
                columns |= r["columns"]
            stats.clips = sum(rows)
            if len(dims) > 1:
                raise ValueError(f"clip_embedding lengths differ ({sorted(dims)}): embeddings from different models")
            score = next((c for c in (self.score_column, self.fallback_column) if c in columns), None)
            decided: set[int] = set()
            if stats.candidates >= 2:
                plan, stats.clusters, task_clips = tasks.plan(job, stats.candidates)
                # Each group of parts writes one scratch file per pairwise task its clips join: groups as
                # large as a pairwise task keep the files few (at 5M clips, a quarter of that made 200,000).
                groups = _pack(rows, self.task_rows)
                bytes_per_clip = 2 * max(dims)  # float16
                limit = self.scratch_gb * 1e9 / bytes_per_clip if self.scratch_gb else math.inf
                waves = _pack(task_clips, limit)
                for w, wave in enumerate(waves):
                    stats.waves += 1
                    span = (wave[0], wave[-1] + 1)
                    # The first wave searches each clip's nearest clusters (and keeps them when more waves follow).
                    near_from = "search" if len(waves) == 1 else "keep" if w == 0 else "reuse"
                    for r in tasks.map(_assign, ((*job, [(i, names[i]) for i in g], plan, score, span, near_from) for g in groups)):
                        stats.copies += r["copies"]
                        stats.searched += r["searched"]
                    for r in tasks.map(_pairs, ((*job, t) for t in wave)):
                        stats.compared += r["compared"]
                    store.delete_tree(f"{scratch}/assign")
                [r] = tasks.map(_resolve, [(*job, names)])
                decided, stats.pairs, stats.duplicates, stats.checked = set(r["parts"]), r["pairs"], r["duplicates"], r["checked"]
            for r in tasks.map(_apply, ((*job, i, n, i in decided) for i, n in enumerate(names))):
                stats.rewritten += r["rewritten"]
        finally:
            store.delete_tree(SCRATCH)
        stats.wall_s = time.perf_counter() - t0
        stats.driver_rss_mb = _rss_mb()
        stats.worker_rss_mb = tasks.worker_rss_mb
        stats.steps_s = tasks.seconds
        return stats


@dataclass
class DedupStats:
    method: str
    parts: int = 0
    clips: int = 0
    candidates: int = 0
    clusters: int = 0
    copies: int = 0  # candidates' embeddings written to scratch (once per pairwise task they join)
    waves: int = 0  # passes of assign + pairs (more than 1 only under scratch_gb)
    searched: int = 0  # candidates whose nearest clusters were searched (each once, whatever the waves)
    compared: int = 0  # clip pairs whose similarity was computed
    pairs: int = 0  # ...at or above the threshold
    checked: int = 0  # pairs within MARGIN of the threshold in half precision, decided again from float32
    duplicates: int = 0
    rewritten: int = 0  # parts written back
    wall_s: float = 0.0
    driver_rss_mb: float = 0.0  # peak RSS of the calling process
    worker_rss_mb: float = 0.0  # largest peak RSS of a Ray worker that ran a dedup task (0 without Ray)
    steps_s: dict[str, float] = field(default_factory=dict)  # wall time of each step

    def __str__(self) -> str:
        method = "exact" if self.clusters <= 1 else f"kmeans, {self.clusters} clusters"
        return (
            f"{self.candidates} of {self.clips} clips compared ({method}; {self.compared} pairs), "
            f"{self.pairs} similar pairs ({self.checked} near the threshold checked in float32), "
            f"{self.duplicates} duplicates, {self.rewritten}/{self.parts} parts "
            f"rewritten in {self.wall_s:.1f}s (peak RSS: this process {self.driver_rss_mb:.0f} MB, "
            f"largest worker {self.worker_rss_mb:.0f} MB)"
        )


# ---------------------------------------------------------------- execution


class _Tasks:
    """Runs the steps as Ray tasks when Ray is initialised (a bounded number in flight, results
    in submission order), else in this process; keeps the largest worker peak RSS seen."""

    def __init__(self, store: Store):
        ray = sys.modules.get("ray")
        self.ray = ray if ray is not None and ray.is_initialized() else None
        self.worker_rss_mb = 0.0
        self.seconds: dict[str, float] = {}  # wall time of each step
        if self.ray is None:
            return
        self.window = 2 * max(1, int(self.ray.cluster_resources().get("CPU", 1)))
        # No credentials ride along (they would land in Ray's logs): workers of the embedded Ray
        # inherit this process's environment, a joined cluster's nodes have their own.
        self.options = {"num_cpus": 1}

    def _seen(self, result: dict, worker: bool = True) -> dict:
        rss = result.pop("rss_mb")
        if worker:
            self.worker_rss_mb = max(self.worker_rss_mb, rss)
        return result

    def map(self, fn, args: Iterable[tuple]) -> Iterator[dict]:
        """fn(*a) for each of `args`, in order, as they finish (consume them all)."""
        t0 = time.perf_counter()
        if self.ray is None:
            for a in args:
                yield self._seen(fn(*a), worker=False)
        else:
            remote = self.ray.remote(fn).options(**self.options)
            pending: collections.deque = collections.deque()
            for a in args:
                if len(pending) >= self.window:
                    yield self._seen(self.ray.get(pending.popleft()))
                pending.append(remote.remote(*a))
            while pending:
                yield self._seen(self.ray.get(pending.popleft()))
        name = fn.__name__.strip("_")
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0  # summed over the waves

    def plan(self, job: tuple, candidates: int) -> tuple:
        """(plan or its object ref, clusters, expected clips of each pairwise task): one cluster for `exact` or fewer than
        `cluster_size` candidates, else k-means trained in a task; the centroids stay in the object
        store, not here."""
        stage = job[3]
        k = math.ceil(candidates / stage.cluster_size) if stage.method == "kmeans" else 1
        if k <= 1:
            return _Plan(None, np.zeros(1, np.int64)), 1, [candidates]
        t0 = time.perf_counter()
        if self.ray is None:
            plan, info = _train(*job, candidates)
            info = self._seen(info, worker=False)
        else:
            plan, info = self.ray.remote(_train).options(num_returns=2, **self.options).remote(*job, candidates)
            info = self._seen(self.ray.get(info))
        self.seconds["train"] = time.perf_counter() - t0
        return plan, info["clusters"], info["task_clips"]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pack(sizes, limit: int) -> list[list[int]]:
    """Consecutive indices grouped so each group's total stays within `limit` (a larger item alone)."""
    groups: list[list[int]] = [[]]
    total = 0
    for i, s in enumerate(sizes):
        if groups[-1] and total + s > limit:
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += s
    return groups if groups[-1] else []


@dataclass
class _Plan:
    """The clusters (None: one cluster of everything) and the pairwise task of each cluster."""

    clusters: kmeans.Clusters | None
    task_of: np.ndarray


# ---------------------------------------------------------------- the steps (task bodies)


def _put(store: Store, rel: str, table: pa.Table) -> None:
    """A scratch file: not synced to disk (a killed dedup starts over without its scratch)."""
    buf = io.BytesIO()
    # Embeddings compress neither way (and a dictionary attempt on them costs 6x the write); scratch is read once.
    pq.write_table(table, buf, compression="none", use_dictionary=False)
    store.write_bytes(rel, buf.getvalue(), durable=False)


def _get(store: Store, rel_dir: str) -> pa.Table | None:
    names = store.list(rel_dir)
    if not names:
        return None
    return pa.concat_tables([pq.read_table(pa.BufferReader(store.read_bytes(f"{rel_dir}/{n}"))) for n in names])


def _undo(table: pa.Table) -> tuple[list[list[str]], list[bool | None]]:
    """filter_reasons and kept as they were before an earlier dedup of this manifest."""
    old = table["filter_reasons"].to_pylist()
    reasons = [[r for r in rs or [] if not r.startswith(REASON)] for rs in old]
    kept = [(not clean) if len(clean) != len(o or []) else k for clean, o, k in zip(reasons, old, table["kept"].to_pylist())]
    return reasons, kept


def _candidates(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of the candidates and their unit embeddings, float32 (n, d)."""
    if "clip_embedding" not in table.column_names:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    _, kept = _undo(table)
    col = table["clip_embedding"].combine_chunks()
    valid = col.is_valid().to_numpy(zero_copy_only=False) & table["clip_id"].is_valid().to_numpy(zero_copy_only=False)
    rows = np.nonzero(valid & np.array([k is not False for k in kept], bool))[0]
    picked = col.take(pa.array(rows))
    dims = pc.unique(pc.list_value_length(picked)).to_pylist()
    if len(dims) > 1:
        raise ValueError(f"clip_embedding lengths differ ({sorted(dims)}): embeddings from different models")
    e = picked.flatten().to_numpy().astype(np.float32).reshape(len(rows), dims[0] if dims else 0)
    e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return rows, e


def _hash(ids: list[str], seed: int) -> np.ndarray:
    """A uniform 64-bit hash of each clip id: the sample does not depend on how rows sit in parts."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "little") for i in ids], np.uint64)


def _vectors(x: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def _matrix(col: pa.ChunkedArray) -> np.ndarray:
    col = col.combine_chunks()
    return col.flatten().to_numpy().reshape(len(col), -1)


def _scan(root: str, s3: S3Config, scratch: str, stage: DedupStage, part: int, name: str, fraction: float) -> dict:
    store = Store(root, s3)
    table = manifest.read_clips_part(store, name, READ + [stage.score_column, stage.fallback_column])
    rows, e = _candidates(table)
    if fraction > 0 and len(rows):
        h = _hash(table["clip_id"].take(pa.array(rows)).to_pylist(), stage.seed)
        pick = h.astype(np.float64) < fraction * 2.0**64
        if pick.any():
            _put(store, f"{scratch}/sample/p{part:06d}.parquet", pa.table({"hash": h[pick], "embedding": _vectors(e[pick].astype(np.float16))}))
    return {
        "rows": table.num_rows,
        "candidates": len(rows),
        "dims": {e.shape[1]} if len(rows) else set(),
        "columns": set(table.column_names),
        "rss_mb": _rss_mb(),
    }


def _train(root: str, s3: S3Config, scratch: str, stage: DedupStage, candidates: int) -> tuple[_Plan, dict]:
    store = Store(root, s3)
    names = store.list(f"{scratch}/sample")
    if not names:  # no candidate drawn: too few to cluster
        return _Plan(None, np.zeros(1, np.int64)), {"clusters": 1, "task_clips": [candidates], "rss_mb": _rss_mb()}
    # Half precision (as scan wrote it): the sample is 40 clips per cluster, 16% of every embedding
    # at cluster_size 250, and k-means only needs it to place centroids.
    hashes, vectors = [], []
    for n in names:
        t = pq.read_table(pa.BufferReader(store.read_bytes(f"{scratch}/sample/{n}")))
        hashes.append(t["hash"].to_numpy())
        vectors.append(_matrix(t["embedding"]))
    x, h = np.concatenate(vectors), np.concatenate(hashes)
    del vectors
    order = np.argsort(h, kind="stable")
    clusters = kmeans.train(x, min(math.ceil(candidates / stage.cluster_size), len(x)), stage.seed, order=order)
    sizing = x[order[:SIZING_ROWS]]
    task_of, task_clips = _tasks_for(kmeans.nearest(clusters, sizing, stage.probes), clusters.k, candidates / len(sizing), stage.task_rows)
    return _Plan(clusters, task_of), {"clusters": clusters.k, "task_clips": task_clips.tolist(), "rss_mb": _rss_mb()}


def _tasks_for(near: np.ndarray, k: int, scale: float, task_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The pairwise task of each of k clusters, and each task's expected clips: runs of
    consecutive clusters (a coarse cell's are adjacent, so a clip's probes often share a run),
    each holding at most about `task_rows` distinct clips, estimated from the sample's nearest
    clusters `near` (a sample clip stands for `scale` clips). Larger runs copy fewer clips."""
    own = np.bincount(near[:, 0], minlength=k) * scale
    limit = float(task_rows)
    for _ in range(8):
        task_of = np.zeros(k, np.int64)
        for t, group in enumerate(_pack(own, limit)):
            task_of[group] = t
        task = np.where(near >= 0, task_of[np.maximum(near, 0)], -1)
        row = np.repeat(np.arange(len(near)), near.shape[1])[task.ravel() >= 0]
        pairs = np.unique(row * (k + 1) + task.ravel()[task.ravel() >= 0])
        clips = np.bincount(pairs % (k + 1), minlength=task_of[-1] + 1) * scale
        if clips.max() <= task_rows * 1.05 or limit < 1:
            break
        limit *= task_rows / clips.max()
    return task_of, clips


def _assign(
    root: str, s3: S3Config, scratch: str, stage: DedupStage, parts: list[tuple[int, str]], plan: _Plan, score: str | None,
    span: tuple[int, int], near_from: str,
) -> dict:
    """Copy each candidate of `parts` to the scratch file of every pairwise task in `span` it joins.
    `near_from`: "search" its nearest clusters, "keep" them too (about 4 bytes a probe a clip) for
    the later waves, which "reuse" them instead of searching again (the search is most of the step)."""
    store = Store(root, s3)
    keys, ids, scores, vecs = [], [], [], []
    for part, name in parts:
        table = manifest.read_clips_part(store, name, READ + ([score] if score else []))
        rows, e = _candidates(table)
        keys.append((np.int64(part) << 32) | rows)
        ids += table["clip_id"].take(pa.array(rows)).to_pylist()
        s = np.zeros(len(rows))
        if score in table.column_names:
            s = table[score].take(pa.array(rows)).cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        scores.append(np.nan_to_num(s, nan=-np.inf))
        vecs.append(e)
    key = np.concatenate(keys)
    if not len(key):
        return {"copies": 0, "searched": 0, "rss_mb": _rss_mb()}
    x = np.concatenate([v for v in vecs if len(v)])
    group, copies, searched = f"g{parts[0][0]:06d}", 0, 0
    kept_near = f"{scratch}/near/{group}.npy"
    if plan.clusters is None:
        near = np.zeros((len(x), 1), np.int64)
    elif near_from == "reuse":
        near = np.load(io.BytesIO(store.read_bytes(kept_near))).astype(np.int64)
    else:
        near, searched = kmeans.nearest(plan.clusters, x, stage.probes), len(x)
        if near_from == "keep":
            buf = io.BytesIO()
            np.save(buf, near.astype(np.int32))
            store.write_bytes(kept_near, buf.getvalue(), durable=False)
    task = np.where(near >= 0, plan.task_of[np.maximum(near, 0)], -1)
    ids_a, score_a = pa.array(ids, pa.string()), np.concatenate(scores)
    # (task, row) once each, sorted by task: each task's rows are one slice.
    joins = (task >= span[0]) & (task < span[1])
    pair = np.unique(task[joins] * len(task) + np.nonzero(joins)[0])
    joined_task, joined_row = pair // len(task), pair % len(task)
    bounds = np.flatnonzero(np.diff(joined_task)) + 1
    for t, sel in zip(joined_task[np.concatenate([[0], bounds])] if len(pair) else [], np.split(joined_row, bounds)):
        own = np.where(task[sel, 0] == t, near[sel, 0], -1)
        guest = task[sel, 1:] == t
        offsets = np.concatenate([[0], np.cumsum(guest.sum(axis=1))]).astype(np.int32)
        table = pa.table(
            {
                "key": key[sel],
                "clip_id": ids_a.take(pa.array(sel)),
                "score": score_a[sel],
                "cluster": own,
                "probes": pa.ListArray.from_arrays(pa.array(offsets), pa.array(near[sel, 1:][guest])),
                "embedding": _vectors(x[sel].astype(np.float16)),
            }
        )
        _put(store, f"{scratch}/assign/t{t:05d}/{group}.parquet", table)
        copies += len(sel)
    return {"copies": copies, "searched": searched, "rss_mb": _rss_mb()}


def similar_pairs(a: np.ndarray, b: np.ndarray | None, threshold: float, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs (i, j) with a[i] . b[j] >= threshold, for unit rows, and their cosines; with b
    None, the pairs within a with i < j. Computed a tile of `block` x `block` at a time (memory O(block^2))."""
    same = b is None
    b = a if same else b
    found_i, found_j, found_cos = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
    for r0 in range(0, len(a), block):
        for c0 in range(r0 if same else 0, len(b), block):
            sims = a[r0 : r0 + block] @ b[c0 : c0 + block].T
            r, c = np.nonzero(sims >= threshold)
            if same and c0 == r0:
                r, c = r[c > r], c[c > r]
            found_i.append(r + r0)
            found_j.append(c + c0)
            found_cos.append(sims[r, c].astype(np.float32))
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_cos)


def _pairs(root: str, s3: S3Config, scratch: str, stage: DedupStage, task: int) -> dict:
    """The task's pairs at or above the threshold from the half-precision copies; those within
    MARGIN of it are marked for `_resolve` to decide again."""
    store = Store(root, s3)
    table = _get(store, f"{scratch}/assign/t{task:05d}")
    if table is None:
        return {"compared": 0, "rss_mb": _rss_mb()}
    x = _matrix(table["embedding"]).astype(np.float32)  # BLAS has no float16 product
    table = table.drop_columns(["embedding"])
    key = table["key"].to_numpy()
    own = table["cluster"].to_numpy()
    probes = table["probes"].combine_chunks()
    guest_row = np.repeat(np.arange(table.num_rows), np.diff(probes.offsets.to_numpy()))
    guest_cluster = probes.flatten().to_numpy()
    members = {c: np.nonzero(own == c)[0] for c in np.unique(own[own >= 0])}
    guests = {c: guest_row[guest_cluster == c] for c in np.unique(guest_cluster)}
    compared, found = 0, [(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))]
    for c, m in members.items():
        g = guests.get(c, np.zeros(0, np.int64))
        compared += len(m) * (len(m) - 1) // 2 + len(g) * len(m)
        i, j, cos = similar_pairs(x[m], None, stage.threshold - MARGIN, stage.block)
        found.append((m[i], m[j], cos))
        if len(g):
            i, j, cos = similar_pairs(x[g], x[m], stage.threshold - MARGIN, stage.block)
            found.append((g[i], m[j], cos))
    i, j, cos = (np.concatenate(f) for f in zip(*found))
    # Each pair once, its clip with the smaller key first (a pair seen in two clusters counts once).
    first = key[i] < key[j]
    pair, at = np.unique(np.stack([np.where(first, i, j), np.where(first, j, i)], axis=1), axis=0, return_index=True)
    if len(pair):
        ends = {f"{side}_{col}": table[col].take(pa.array(pair[:, n])) for n, side in enumerate("ab") for col in ("key", "clip_id", "score")}
        ends["sure"] = pa.array(cos[at] >= stage.threshold + MARGIN)
        _put(store, f"{scratch}/pairs/t{task:05d}.parquet", pa.table(ends))
    return {"compared": compared, "rss_mb": _rss_mb()}


def _cosines(store: Store, names: list[str], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosines of the clips with keys a[e] and b[e] (part << 32 | row) from the manifest's
    embeddings, normalised as `_candidates` does; each part read once (column-selected)."""
    ends = np.concatenate([a, b])
    parts, inverse = np.unique(ends >> 32, return_inverse=True)
    vectors = np.zeros((len(ends), 0), np.float32)
    for n, p in enumerate(parts):
        at = np.nonzero(inverse == n)[0]
        col = manifest.read_clips_part(store, names[p], ["clip_embedding"])["clip_embedding"].take(pa.array(ends[at] & 0xFFFFFFFF))
        e = _matrix(col).astype(np.float32)
        if not vectors.shape[1]:
            vectors = np.zeros((len(ends), e.shape[1]), np.float32)
        vectors[at] = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return np.einsum("ij,ij->i", vectors[: len(a)], vectors[len(a) :])


def keepers(a: np.ndarray, b: np.ndarray, key: np.ndarray, clip_id: np.ndarray, score: np.ndarray) -> np.ndarray:
    """The keeper rule on a graph of similar pairs: edges (a[e], b[e]) between vertices 0..V-1
    (the keys, clip ids and scores of which are given). Returns for each vertex the vertex that
    claimed it, or -1 for keepers."""
    n = len(key)
    src, dst = np.concatenate([a, b]), np.concatenate([b, a])
    order = np.argsort(src, kind="stable")
    src, dst = src[order], dst[order]
    start = np.searchsorted(src, np.arange(n + 1))
    claimed_by = np.full(n, -1, np.int64)
    claimed = np.zeros(n, bool)
    for v in np.lexsort((clip_id, -score)):
        if claimed[v]:
            continue
        claimed[v] = True
        nb = dst[start[v] : start[v + 1]]
        nb = nb[~claimed[nb]]
        claimed[nb] = True
        claimed_by[nb] = v
    return claimed_by


def _resolve(root: str, s3: S3Config, scratch: str, stage: DedupStage, names: list[str]) -> dict:
    store = Store(root, s3)
    table = _get(store, f"{scratch}/pairs")
    unsure = pc.invert(table["sure"]).to_numpy(zero_copy_only=False) if table is not None else np.zeros(0, bool)
    checked = 0
    if unsure.any():  # decided from float32, as the exact method would
        rows = np.nonzero(unsure)[0]
        cos = _cosines(store, names, table["a_key"].to_numpy()[rows], table["b_key"].to_numpy()[rows])
        table = pa.concat_tables([table.filter(pa.array(~unsure)), table.take(pa.array(rows[cos >= stage.threshold]))])
        checked = len(rows)
    if table is None or not table.num_rows:
        return {"parts": [], "pairs": 0, "duplicates": 0, "checked": checked, "rss_mb": _rss_mb()}
    ends = np.concatenate([table[f"{s}_key"].to_numpy() for s in "ab"])
    key, first, vertex = np.unique(ends, return_index=True, return_inverse=True)
    clip_id = np.concatenate([table[f"{s}_clip_id"].to_numpy() for s in "ab"])[first].astype(str)
    score = np.concatenate([table[f"{s}_score"].to_numpy() for s in "ab"])[first]
    # A pair found by two tasks (its clips probe clusters of both) is one edge.
    edges = np.unique(vertex.reshape(2, -1).T, axis=0)
    claimed_by = keepers(edges[:, 0], edges[:, 1], key, clip_id, score)
    dup = np.nonzero(claimed_by >= 0)[0]
    part, row = key[dup] >> 32, key[dup] & 0xFFFFFFFF
    for p in np.unique(part):
        at = part == p
        decision = pa.table({"row": row[at], "keeper": pa.array(clip_id[claimed_by[dup[at]]], pa.string())})
        _put(store, f"{scratch}/decisions/p{p:06d}.parquet", decision)
    return {"parts": np.unique(part).tolist(), "pairs": len(edges), "duplicates": len(dup), "checked": checked, "rss_mb": _rss_mb()}


def _apply(root: str, s3: S3Config, scratch: str, stage: DedupStage, part: int, name: str, decided: bool) -> dict:
    store = Store(root, s3)
    table = manifest.read_clips_part(store, name)
    reasons, kept = _undo(table)
    dup: list[str | None] = [None] * table.num_rows
    if decided:
        d = pq.read_table(pa.BufferReader(store.read_bytes(f"{scratch}/decisions/p{part:06d}.parquet")))
        for row, keeper in zip(d["row"].to_pylist(), d["keeper"].to_pylist()):
            dup[row] = keeper
            if stage.mode == "filter":
                reasons[row].append(REASON + keeper)
                kept[row] = False
    new = table
    for column, values in (
        ("kept", pa.array(kept, pa.bool_())),
        ("filter_reasons", pa.array(reasons, pa.list_(pa.string()))),
        ("duplicate_of", pa.array(dup, pa.string())),
    ):
        i = new.schema.get_field_index(column)
        new = new.set_column(i, column, values) if i >= 0 else new.append_column(column, values)
    changed = not new.equals(table)
    if changed:
        manifest.write_clips_part(store, name, new)
    return {"rewritten": int(changed), "rss_mb": _rss_mb()}


# ---------------------------------------------------------------- command line


def cmd_dedup(args) -> int:
    from pydantic import ValidationError

    from curate.cli import console, fail, say_log
    from curate.config import one_line_error

    names = ("method", "threshold", "mode", "score_column", "fallback_column", "cluster_size", "probes", "seed", "scratch_gb")
    given = {k: getattr(args, k) for k in names}
    try:
        stage = DedupStage(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as e:
        return fail(one_line_error(e, prefix="dedup"))
    store = Store(args.output, S3Config(endpoint_url=args.endpoint_url))
    parts = manifest.committed_parts(store)
    if not parts:
        return fail(f"{args.output}: no committed clips manifest parts under {manifest.CLIPS_DIR}/")
    if not any("clip_embedding" in manifest.part_schema(store, f"{manifest.CLIPS_DIR}/{n}").names for n in parts):
        return fail(f"{args.output}: its clips have no clip_embedding column (the pipeline that wrote it had no "
                    "embedding stage): nothing to compare, nothing changed")
    from curate.engine import connect_ray

    try:
        with console(args.output, args.verbose, "dedup") as (_, log_path):
            connect_ray(args.address)  # joined, or embedded and loopback only as `curate run`'s
            stats = stage.process_manifest(store)
    except ValueError as e:  # on Ray, the task's error wraps it
        return fail(str(getattr(e, "cause", e)), code=1)
    print(f"curate dedup: {stats}")
    print(f"curate dedup: `curate report {args.output}` brings report.html, README.md and summary.json up to date")
    say_log(log_path)
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(asdict(stats), indent=2))
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "dedup",
        help="run semantic dedup alone on a finished output (after merging runs, or to try another threshold)",
        description="The pipeline's dedup stage on OUTPUT's clips manifest, rewritten part by part; unset options take the stage's defaults.",
    )
    p.add_argument("output", help="the run's output directory (or s3:// prefix)")
    p.add_argument("--method", choices=["kmeans", "exact"], help="kmeans (default) or exact: every pair, for small runs")
    p.add_argument("--threshold", type=float, help="cosine at or above which two clips are duplicates (default 0.95)")
    p.add_argument("--mode", choices=["score-only", "filter"], help="filter: duplicates are no longer kept (default score-only)")
    p.add_argument("--score-column", help="the best-scored clip of a group keeps (default aesthetic_score)")
    p.add_argument("--fallback-column", help="used when the score column is absent (default motion_score)")
    p.add_argument("--cluster-size", type=int, help="mean clips per k-means cluster (default 250)")
    p.add_argument("--probes", type=int, help="nearest clusters each clip is compared in (default 5)")
    p.add_argument("--seed", type=int, help="k-means seed (default 0)")
    p.add_argument("--scratch-gb", type=float, help="most GB of scratch at once under OUTPUT (default: no limit)")
    p.add_argument("--address", default=None, help="join a Ray cluster: auto or HOST:PORT (default: a local Ray)")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint of an s3:// OUTPUT")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the figures here")
    p.add_argument("--verbose", action="store_true", help="show Ray's own log lines instead of writing them to OUTPUT/logs/")
    p.set_defaults(func=cmd_dedup)
    return p
