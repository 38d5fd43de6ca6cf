"""Caption alignment: `clip_text_score`, the CLIP cosine similarity between a clip's caption and its frames.

Runs after the caption stage, on kept clips only. The image side is the clip embedding (mean of the
frame embeddings, re-normalised), reused from the embedding stage when it ran with the same `clip:`
block. The caption is truncated to CLIP's 77-token context, so the score mostly reflects the
caption's opening sentence: a low value flags a caption about something else (a hallucinating
captioner, a caption of the wrong clip).

Because it runs after the filter stage, its threshold (`min_score`, filter mode) is applied here
and recorded in `filter_reasons` like any other rule, rather than through `filter_rules()`.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
from pydantic import Field

from curate.models import ModelRef
from curate.stage import Stage
from filters.clip_model import CLIP_READS, ClipEncoder, ClipSpec, clip_vector, frame_embeddings
from filters.filter import apply_rules


class CaptionAlignmentStage(Stage):
    name: ClassVar[str] = "caption_alignment"
    order: ClassVar[int] = 75
    reads: ClassVar[frozenset[str]] = CLIP_READS
    kept_only: ClassVar[bool] = True
    uses_gpu: ClassVar[bool] = True

    clip: ClipSpec = ClipSpec()
    caption_column: str = "caption"
    min_score: float | None = Field(None, ge=-1, le=1)  # a cosine
    batch_size: int = Field(16, ge=1)

    def outputs(self) -> list[pa.Field]:
        return [pa.field("clip_text_score", pa.float64())]

    def models(self) -> list[ModelRef]:
        return [self.clip.ref(self.name)]

    def setup(self) -> None:
        self._encoder = ClipEncoder(self.clip, self.name)

    def process_batch(self, clips: list[dict]) -> list[dict]:
        embs = frame_embeddings(clips, self.clip, lambda: self._encoder)
        todo = [i for i, (c, e) in enumerate(zip(clips, embs)) if e is not None and c.get(self.caption_column)]
        texts = self._encoder.encode_texts([clips[i][self.caption_column] for i in todo]) if todo else None
        for c in clips:
            c["clip_text_score"] = None
        for t, i in zip(texts if todo else [], todo):
            clips[i]["clip_text_score"] = float(np.dot(t, clip_vector(embs[i])))
        if self.mode == "filter" and self.min_score is not None:
            apply_rules(clips, [f"clip_text_score >= {self.min_score}"])
        return clips
