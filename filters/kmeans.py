"""Two-level spherical k-means over unit embeddings, and the clusters each vector is compared in.

Semantic dedup as the field does it (SemDeDup, Abbas et al. 2023, arXiv:2303.09540; NeMo
Curator's semantic deduplication) clusters the embeddings with k-means and compares pairs only
within clusters. Two things are added here, both measured in bench/README.md (Dedup at scale):

- Probes. A near-duplicate pair can straddle a cluster boundary. Each vector is compared in the
  clusters of its `probes` nearest centroids (the nprobe of an IVF index), against the clips whose
  nearest centroid that is; a pair is found when either clip's nearest cluster is among the
  other's probes. One probe is SemDeDup's hard assignment.
- Two levels. With k = n / cluster_size clusters, assigning n vectors to a flat k-means costs
  n * k dot products, quadratic in n. The fine centroids are found per cell of a coarse k-means
  (hierarchical k-means, Nister & Stewenius 2006, "Scalable recognition with a vocabulary tree"):
  ceil(sqrt(k)) coarse cells, each with its share of the k fine centroids. A vector's nearest fine
  centroids are searched in its `coarse_probes` nearest cells, about (1 + coarse_probes) * sqrt(k)
  dot products.

K-means is faiss's (`faiss.Kmeans`, spherical: centroids renormalised every iteration, so inner
product is cosine); a seed fixes its initialisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NITER = 20  # Lloyd iterations per k-means (faiss's default is 25; the partition, not its optimum, matters here)
# Cells searched for a vector's nearest fine centroids. On 100k synthetic clips (bench/README.md)
# 8 cells capped the recall of pairs at 0.991 whatever the probes; 16 reached 0.998-1.0.
COARSE_PROBES = 16


@dataclass
class Clusters:
    """Fine centroids grouped by coarse cell. `coarse` (k1, d) and `fine` (k, d) are float32 unit
    vectors; the fine centroids of cell j are rows `start[j]:start[j + 1]` of `fine`."""

    coarse: np.ndarray
    fine: np.ndarray
    start: np.ndarray

    @property
    def k(self) -> int:
        return len(self.fine)


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    if k == 1:
        c = x.mean(axis=0, keepdims=True)
        return c / max(float(np.linalg.norm(c)), 1e-12)
    import faiss

    # min_points_per_centroid=1: the caller sizes k to its sample, faiss need not warn about it.
    km = faiss.Kmeans(x.shape[1], k, niter=NITER, seed=seed, spherical=True, min_points_per_centroid=1)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return km.centroids


def train(sample: np.ndarray, k: int, seed: int, order: np.ndarray | None = None, min_points: int = 39) -> Clusters:
    """About `k` fine centroids for the unit vectors `sample` (n, d; float16 is enough), n >= k,
    taking the rows in `order` (default as given): with a hash order the result does not depend on
    where the rows came from. Deterministic for a given order and seed.

    The coarse k-means sees the first 256 rows per cell in that order (faiss would subsample to as
    many); each coarse cell then gets fine centroids in proportion to its share of the sample, but
    never fewer than `min_points` sample vectors per centroid (faiss's own floor for a meaningful
    k-means). Empty cells are dropped. Only one cell's rows are ever converted to float32.
    """
    order = np.arange(len(sample)) if order is None else order
    k1 = math.isqrt(k - 1) + 1 if k > 1 else 1
    coarse = _kmeans(sample[order[: 256 * k1]].astype(np.float32), min(k1, len(sample)), seed)
    cell = np.concatenate([np.argmax(sample[i : i + 65536].astype(np.float32) @ coarse.T, axis=1) for i in range(0, len(sample), 65536)])
    ranked = cell[order]
    kept, fine, start = [], [], [0]
    for j in range(len(coarse)):
        members = order[ranked == j]
        if not len(members):
            continue
        kj = max(1, min(round(k * len(members) / len(sample)), len(members) // min_points))
        kept.append(j)
        fine.append(_kmeans(sample[members].astype(np.float32), kj, seed + 1 + j))
        start.append(start[-1] + kj)
    return Clusters(coarse[kept], np.concatenate(fine), np.array(start, np.int64))


def nearest(clusters: Clusters, x: np.ndarray, probes: int, coarse_probes: int = COARSE_PROBES, chunk: int = 2048) -> np.ndarray:
    """The ids of the `probes` fine centroids nearest each unit vector of `x` (n, d), nearest first,
    searched in its `coarse_probes` nearest coarse cells: int64 (n, probes), -1 where those cells
    hold fewer centroids. Column 0 is the vector's own cluster. Memory: `chunk` rows at a time."""
    return np.concatenate([_nearest(clusters, x[i : i + chunk], probes, coarse_probes) for i in range(0, len(x), chunk)])


def _nearest(clusters: Clusters, x: np.ndarray, probes: int, coarse_probes: int) -> np.ndarray:
    # torch.topk, not np.argpartition: selecting 5 of ~2,500 candidates a vector took 28 us with
    # numpy, 4 us with torch, a quarter of the search (bench/README.md, Dedup at scale).
    import torch

    x = x.astype(np.float32, copy=False)
    probes = min(probes, clusters.k)
    coarse_probes = min(coarse_probes, len(clusters.coarse))
    cells = torch.topk(torch.from_numpy(x @ clusters.coarse.T), coarse_probes, dim=1).indices.numpy()
    # Every vector's candidates side by side, a row per probed cell padded to the largest cell.
    width = int(np.diff(clusters.start).max())
    ids = clusters.start[cells][:, :, None] + np.arange(width)
    sims = np.full(ids.shape, -np.inf, np.float32)
    for j in range(len(clusters.coarse)):
        rows, slot = np.nonzero(cells == j)
        lo, hi = clusters.start[j], clusters.start[j + 1]
        if len(rows):
            sims[rows, slot, : hi - lo] = x[rows] @ clusters.fine[lo:hi].T
    sims, ids = sims.reshape(len(x), -1), ids.reshape(len(x), -1)
    top = torch.topk(torch.from_numpy(sims), min(probes, sims.shape[1]), dim=1)  # sorted, most similar first
    found = np.where(np.isfinite(top.values.numpy()), np.take_along_axis(ids, top.indices.numpy(), axis=1), -1)
    return np.pad(found, ((0, 0), (0, probes - found.shape[1])), constant_values=-1)
