"""Synthetic clips manifests with planted near-duplicate groups, written part by part as the
pipeline writes them (committed clips part, then its videos twin), for dedup tests and bench/dedup_scale.py.

Embeddings imitate CLIP's: unit vectors with a common direction (random clips have a cosine of
about 0.33), topics of about `topic_size` clips, a 64-d latent that varies within every topic, and
isotropic noise. A planted group is a leader and 1-4 copies at cosine 0.955-0.995 to it, moved
along the directions clips vary in (latent and noise); members of a group land in its part and
the next, so duplicates cross parts. Scores have one decimal, so equal scores (ties broken by
clip_id) occur. Everything is a function of (seed, part): any part can be made alone, in any order.
"""

from __future__ import annotations

import collections
import hashlib
import math

import numpy as np
import pyarrow as pa

from curate import manifest
from curate.record import clip_schema
from curate.storage import Store

LATENT = 64
FIELDS = [
    pa.field("errors", pa.list_(pa.string())),
    pa.field("clip_embedding", pa.list_(pa.float32())),
    pa.field("aesthetic_score", pa.float64()),
    pa.field("motion_score", pa.float64()),
    pa.field("duplicate_of", pa.string()),
]
SCHEMA = clip_schema(FIELDS, transient=False)


class Corpus:
    def __init__(self, parts: int, rows: int, d: int = 768, seed: int = 0, topic_size: int = 500, dup_share: float = 0.2):
        self.parts, self.rows, self.d, self.seed = parts, rows, d, seed
        rng = np.random.default_rng([seed, 0])
        self.mean = _unit(rng.standard_normal(d))
        self.basis = np.linalg.qr(rng.standard_normal((d, LATENT)))[0].astype(np.float32)
        self.topics = _unit(rng.standard_normal((max(1, parts * rows // topic_size), d)))
        # Each group has about 3.5 members, half of them (after the leader) in the next part.
        self.groups = round(rows * dup_share / 3.5)

    def _clips(self, rng, n: int) -> np.ndarray:
        t = rng.integers(0, len(self.topics), n)
        return _unit(0.6 * self.mean + 0.5 * self.topics[t] + self._variation(rng, n))

    def _variation(self, rng, n: int) -> np.ndarray:
        z = rng.standard_normal((n, LATENT), dtype=np.float32) / math.sqrt(LATENT)
        return 0.6 * z @ self.basis.T + 0.35 * rng.standard_normal((n, self.d), dtype=np.float32) / math.sqrt(self.d)

    def _group(self, part: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of group j of `part` and which of them sit in the next part."""
        rng = np.random.default_rng([self.seed, 1, part, j])
        leader = self._clips(rng, 1)[0]
        size = int(rng.integers(2, 6))
        move = self._variation(rng, size - 1)
        move -= np.outer(move @ leader, leader)
        cos = rng.uniform(0.955, 0.995, size - 1)[:, None]
        copies = cos * leader + np.sqrt(1 - cos**2) * _unit(move)
        return np.vstack([leader, copies]).astype(np.float32), (np.arange(size) % 2 == 0) & (np.arange(size) > 0)

    def embeddings(self, part: int) -> np.ndarray:
        """The (rows, d) unit vectors of `part`."""
        planted = []
        for p, here in ((part, False), (part - 1, True)):
            if 0 <= p < self.parts - (1 if here else 0):
                for j in range(self.groups):
                    v, later = self._group(p, j)
                    planted.append(v[later == here])
        x = self._clips(np.random.default_rng([self.seed, 2, part]), self.rows)
        planted_rows = np.concatenate(planted) if planted else np.zeros((0, self.d), np.float32)
        x[: len(planted_rows)] = planted_rows[: self.rows]
        return x[np.random.default_rng([self.seed, 3, part]).permutation(self.rows)]

    def table(self, part: int) -> pa.Table:
        x = self.embeddings(part)
        rng = np.random.default_rng([self.seed, 4, part])
        video = [hashlib.sha1(f"{self.seed}/{part}/{r // 8}".encode()).hexdigest()[:16] for r in range(self.rows)]
        n = self.rows
        cols = {
            "clip_id": [f"{v}_{r % 8 * 100}_{r % 8 * 100 + 100}" for r, v in enumerate(video)],
            "video_id": video,
            "source_uri": [f"synthetic/{v}.mp4" for v in video],
            "start_s": np.arange(n) % 8 * 4.0,
            "end_s": np.arange(n) % 8 * 4.0 + 4.0,
            "duration_s": np.full(n, 4.0),
            "kept": np.ones(n, bool),
            "filter_reasons": pa.array([[]] * n, pa.list_(pa.string())),
            "clip_embedding": pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * self.d, self.d, dtype=np.int32)), pa.array(x.reshape(-1))),
            "aesthetic_score": np.round(rng.uniform(3, 7, n), 1),
        }
        return pa.table({f.name: cols[f.name] if f.name in cols else pa.nulls(n, f.type) for f in SCHEMA}, schema=SCHEMA)

    def write(self, store: Store, part: int) -> None:
        write_part(store, f"part-synth-{part:05d}.parquet", self.table(part))

    def commit(self, root) -> str:
        """Every part, committed under the local directory `root`; returns it."""
        for part in range(self.parts):
            self.write(Store(str(root)), part)
        return root


def write_part(store: Store, name: str, clips: pa.Table) -> None:
    """Commit a clips part like the pipeline: the clips part, then its videos twin."""
    manifest.write_clips_part(store, name, clips)
    counts = collections.Counter(clips["video_id"].to_pylist())
    videos = [{"video_id": v, "status": "ok", "num_clips": n, "attempts": 1} for v, n in sorted(counts.items())]
    store.write_bytes(f"{manifest.VIDEOS_DIR}/{name}", manifest.to_parquet(pa.Table.from_pylist(videos, schema=manifest.VIDEOS_SCHEMA)))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
