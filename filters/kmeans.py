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
# Cells searched for a vector's nearest fine centroids: enough that the true nearest few are among
# them (bench/README.md: recall equal to a flat search at 8 cells).
COARSE_PROBES = 8


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


def train(sample: np.ndarray, k: int, seed: int, min_points: int = 39) -> Clusters:
    """About `k` fine centroids for the unit vectors `sample` (n, d), n >= k.

    Each coarse cell gets fine centroids in proportion to its share of the sample, but never fewer
    than `min_points` sample vectors per centroid (faiss's own floor for a meaningful k-means).
    Empty coarse cells are dropped. Deterministic for a given sample order and seed.
    """
    k1 = math.isqrt(k - 1) + 1 if k > 1 else 1
    coarse = _kmeans(sample, min(k1, len(sample)), seed)
    cell = np.argmax(sample @ coarse.T, axis=1)
    kept, fine, start = [], [], [0]
    for j in range(len(coarse)):
        members = sample[cell == j]
        if not len(members):
            continue
        kj = max(1, min(round(k * len(members) / len(sample)), len(members) // min_points))
        kept.append(j)
        fine.append(_kmeans(members, kj, seed + 1 + j))
        start.append(start[-1] + kj)
    return Clusters(coarse[kept], np.concatenate(fine), np.array(start, np.int64))


def nearest(clusters: Clusters, x: np.ndarray, probes: int, coarse_probes: int = COARSE_PROBES) -> np.ndarray:
    """The ids of the `probes` fine centroids nearest each unit vector of `x` (n, d), nearest first,
    searched in its `coarse_probes` nearest coarse cells: int64 (n, probes), -1 where those cells
    hold fewer centroids. Column 0 is the vector's own cluster."""
    n = len(x)
    probes = min(probes, clusters.k)
    cells = np.argsort(-(x @ clusters.coarse.T), axis=1, kind="stable")[:, :coarse_probes]
    best_sim = np.full((n, probes), -np.inf, np.float32)
    best_id = np.full((n, probes), -1, np.int64)
    for j in range(len(clusters.coarse)):
        rows = np.nonzero((cells == j).any(axis=1))[0]
        if not len(rows):
            continue
        lo, hi = clusters.start[j], clusters.start[j + 1]
        sims = np.concatenate([best_sim[rows], x[rows] @ clusters.fine[lo:hi].T], axis=1)
        ids = np.concatenate([best_id[rows], np.broadcast_to(np.arange(lo, hi), (len(rows), hi - lo))], axis=1)
        top = np.argsort(-sims, axis=1, kind="stable")[:, :probes]
        best_sim[rows] = np.take_along_axis(sims, top, axis=1)
        best_id[rows] = np.take_along_axis(ids, top, axis=1)
    return best_id
