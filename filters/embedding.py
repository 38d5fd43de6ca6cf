"""CLIP embeddings of each clip, for dedup and caption alignment, and a zero-shot overlay probability.

`clip_embedding` is the mean of the sampled frames' L2-normalised image embeddings, normalised
again (float32). The per-frame embeddings stay on the record (transient `frame_embeddings`) so the
aesthetic and caption-alignment stages reuse them instead of running CLIP again.

`text_overlay_prob` is CLIP's zero-shot probability that a frame carries burned-in text (subtitles,
captions, watermarks) against a plain frame, from two averaged prompt sets, max over frames. It
complements the OCR stage: it needs no legible text, but it is a soft signal.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
from pydantic import Field

from curate.models import ModelRef
from curate.stage import Stage
from filters.clip_model import CLIP_READS, ClipEncoder, ClipSpec, clip_vector, frame_embeddings

OVERLAY_PROMPTS = [
    "a video frame with subtitles",
    "a video still with burned-in captions",
    "an image with a text overlay",
    "a video frame with a watermark logo",
]
CLEAN_PROMPTS = [
    "a video frame",
    "a still from a film",
    "a photo",
    "a video still with no text",
]


class ClipEmbeddingStage(Stage):
    name: ClassVar[str] = "embedding"
    order: ClassVar[int] = 40
    reads: ClassVar[frozenset[str]] = CLIP_READS
    uses_gpu: ClassVar[bool] = True

    clip: ClipSpec = ClipSpec()
    text_overlay_prob: bool = True
    overlay_prompts: list[str] = OVERLAY_PROMPTS
    clean_prompts: list[str] = CLEAN_PROMPTS
    max_text_overlay_prob: float | None = Field(None, ge=0, le=1)
    batch_size: int = Field(16, ge=1)

    def outputs(self) -> list[pa.Field]:
        fields = [pa.field("clip_embedding", pa.list_(pa.float32()))]
        if self.text_overlay_prob:
            fields.append(pa.field("text_overlay_prob", pa.float64()))
        return fields

    def models(self) -> list[ModelRef]:
        return [self.clip.ref(self.name)]

    def filter_rules(self) -> list[str]:
        if self.text_overlay_prob and self.max_text_overlay_prob is not None:
            return [f"text_overlay_prob <= {self.max_text_overlay_prob}"]
        return []

    def setup(self) -> None:
        self._encoder = ClipEncoder(self.clip, self.name)
        if self.text_overlay_prob:
            # One class vector per prompt set: the normalised mean of its prompt embeddings.
            classes = [self._encoder.encode_texts(p).mean(axis=0) for p in (self.overlay_prompts, self.clean_prompts)]
            self._classes = np.stack([c / np.linalg.norm(c) for c in classes]).astype(np.float32)

    def _overlay_prob(self, frame_emb: np.ndarray) -> float:
        logits = self._encoder.logit_scale * frame_emb @ self._classes.T
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return float((p[:, 0] / p.sum(axis=1)).max())

    def process_batch(self, clips: list[dict]) -> list[dict]:
        for c, e in zip(clips, frame_embeddings(clips, self.clip, lambda: self._encoder)):
            c["clip_embedding"] = None
            if self.text_overlay_prob:
                c["text_overlay_prob"] = None
            if e is None:
                continue
            c["clip_embedding"] = clip_vector(e)
            c["frame_embeddings"] = list(e)
            c["frame_embeddings_model"] = self._encoder.identity
            if self.text_overlay_prob:
                c["text_overlay_prob"] = self._overlay_prob(e)
        return clips
