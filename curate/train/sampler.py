"""Rank-aware, resumable bucket batch sampler.

Every batch holds clips of one bucket (one tensor shape). An epoch's order is a pure function of
(seed, epoch): each bucket is shuffled, cut into *global* batches of `batch_size * world_size`,
the global batches are shuffled, and rank r takes slice r of each. So all ranks run the same number
of steps (no collective ever waits on a rank that ran out), and resuming needs only
(epoch, batches already taken), which the training loop tracks and checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class BucketBatchSampler:
    def __init__(self, buckets: list[int], batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.buckets = np.asarray(buckets)
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches for `epoch` (clip indices), in order."""
        rng = np.random.default_rng([self.seed, epoch])
        global_size = self.batch_size * self.world_size
        batches = []
        for b in np.unique(self.buckets):
            idx = rng.permutation(np.flatnonzero(self.buckets == b))
            # Incomplete global batches are dropped; a new epoch reshuffles, so no clip is dropped for good.
            for i in range(len(idx) // global_size):
                batches.append(idx[i * global_size : (i + 1) * global_size])
        order = rng.permutation(len(batches))
        lo = self.rank * self.batch_size
        return [batches[i][lo : lo + self.batch_size].tolist() for i in order]

    def __len__(self) -> int:
        return len(self.epoch_batches(self.epoch)) - self.start

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Iterate `epoch` from its `start`-th batch (a resumed run's sampler position)."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        # Each item carries the epoch so the dataset can draw that epoch's random crop deterministically.
        for batch in self.epoch_batches(self.epoch)[self.start :]:
            yield [(self.epoch, i) for i in batch]
