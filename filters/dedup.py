"""Semantic dedup: near-duplicate clips by cosine similarity of their CLIP embeddings.

Runs once on the whole clips manifest. Candidates are the clips still kept that have an
embedding. Clips are visited best-scored first (`score_column`, else `fallback_column`, ties by
clip_id): an unclaimed clip keeps itself and claims every unclaimed clip within `threshold`
cosine of it. So each duplicate is directly similar to its keeper (no chaining through
intermediate clips), the keeper is the best clip of its group, and the result is deterministic.

Similar pairs come from a blockwise matrix product (`block` rows at a time), so memory stays
O(block x n) and the Python work is O(n + pairs).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.stage import GlobalStage


def similar_pairs(emb: np.ndarray, threshold: float, block: int = 4096) -> list[np.ndarray]:
    """For each row of unit vectors, the sorted indices of the other rows with cosine >= threshold.
    Only the upper triangle of the similarity matrix is computed, `block` rows at a time."""
    n = len(emb)
    src, dst = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start in range(0, n, block):
        r, c = np.nonzero(emb[start : start + block] @ emb[start:].T >= threshold)
        upper = c > r  # columns are offset by `start` like the rows: c > r means a later clip
        src.append(r[upper] + start)
        dst.append(c[upper] + start)
    a, b = np.concatenate(src), np.concatenate(dst)
    rows, cols = np.concatenate([a, b]), np.concatenate([b, a])
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    return np.split(cols, np.searchsorted(rows, np.arange(1, n)))


class DedupStage(GlobalStage):
    name: ClassVar[str] = "dedup"
    order: ClassVar[int] = 90

    threshold: float = 0.95
    score_column: str = "aesthetic_score"
    fallback_column: str = "motion_score"
    block: int = 4096

    def outputs(self) -> list[pa.Field]:
        return [pa.field("duplicate_of", pa.string())]

    def _scores(self, table: pa.Table) -> np.ndarray:
        for col in (self.score_column, self.fallback_column):
            if col in table.column_names:
                return np.nan_to_num(pc.fill_null(table[col].cast(pa.float64()), np.nan).to_numpy(), nan=-np.inf)
        return np.zeros(table.num_rows)

    def keepers(self, table: pa.Table, kept: list[bool]) -> list[str | None]:
        """duplicate_of for each row: the keeper's clip_id, or None for keepers and non-candidates."""
        ids = table["clip_id"].to_pylist()
        out: list[str | None] = [None] * table.num_rows
        if "clip_embedding" not in table.column_names:
            return out
        col = table["clip_embedding"].combine_chunks()
        has = col.is_valid().to_numpy(zero_copy_only=False)
        cand = [i for i in range(table.num_rows) if kept[i] is not False and has[i] and ids[i] is not None]
        if len(cand) < 2:
            return out
        picked = col.take(cand)
        dims = pc.unique(pc.list_value_length(picked)).to_pylist()
        if len(dims) != 1:
            raise ValueError(f"clip_embedding lengths differ ({sorted(dims)}): embeddings from different models")
        e = picked.flatten().to_numpy().reshape(len(cand), dims[0]).astype(np.float32)
        e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        neighbours = similar_pairs(e, self.threshold, self.block)
        scores = self._scores(table)[cand]
        order = sorted(range(len(cand)), key=lambda j: (-scores[j], ids[cand[j]]))
        claimed = np.zeros(len(cand), bool)
        for j in order:
            if claimed[j]:
                continue
            claimed[j] = True
            for k in neighbours[j]:
                if not claimed[k]:
                    claimed[k] = True
                    out[cand[k]] = ids[cand[j]]
        return out

    def process_manifest(self, clips: pa.Table) -> pa.Table:
        # Undo an earlier dedup of the same manifest (a resumed run), so the result is the same.
        old_reasons = clips["filter_reasons"].to_pylist()
        reasons = [[r for r in rs or [] if not r.startswith("duplicate_of ")] for rs in old_reasons]
        kept = [
            (not clean) if len(clean) != len(old or []) else k
            for clean, old, k in zip(reasons, old_reasons, clips["kept"].to_pylist())
        ]
        dup = self.keepers(clips, kept)
        if self.mode == "filter":
            for i, d in enumerate(dup):
                if d is not None:
                    reasons[i].append(f"duplicate_of {d}")
                    kept[i] = False
        columns = {
            "kept": pa.array(kept, pa.bool_()),
            "filter_reasons": pa.array(reasons, pa.list_(pa.string())),
            "duplicate_of": pa.array(dup, pa.string()),
        }
        for name, col in columns.items():
            i = clips.schema.get_field_index(name)
            clips = clips.set_column(i, name, col) if i >= 0 else clips.append_column(name, col)
        return clips
