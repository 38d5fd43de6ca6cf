"""Aesthetic score: the LAION improved aesthetic predictor on CLIP ViT-L-14 image embeddings.

The head (christophschuhmann/improved-aesthetic-predictor, `sac+logos+ava1-l14-linearMSE.pth`) is
a stack of linear layers 768-1024-128-64-16-1 trained on L2-normalised ViT-L-14 (openai) image
embeddings; it predicts a 1-10 rating. Each sampled frame is scored and the clip gets the mean or
the min (a clip is only as good as its worst frame). Frame embeddings computed by the embedding
stage with the same `clip:` block are reused, so CLIP runs once per clip when both stages are on.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from curate.models import ModelRef, fetch
from curate.stage import Stage
from filters.clip_model import CLIP_READS, ClipEncoder, ClipSpec, frame_embeddings

HEAD_NAME = "sac+logos+ava1-l14-linearMSE.pth"
HEAD_URL = "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth"


def aesthetic_head(input_size: int = 768):
    """The predictor's architecture, named as in its checkpoint (`layers.{0,2,4,6,7}`)."""
    import torch.nn as nn

    class AestheticHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(input_size, 1024),
                nn.Dropout(0.2),
                nn.Linear(1024, 128),
                nn.Dropout(0.2),
                nn.Linear(128, 64),
                nn.Dropout(0.1),
                nn.Linear(64, 16),
                nn.Linear(16, 1),
            )

        def forward(self, x):
            return self.layers(x)

    return AestheticHead()


class AestheticStage(Stage):
    name: ClassVar[str] = "aesthetic"
    order: ClassVar[int] = 45
    reads: ClassVar[frozenset[str]] = CLIP_READS
    uses_gpu: ClassVar[bool] = True

    clip: ClipSpec = ClipSpec()
    # The head's checkpoint (local file); else $CURATE_MODEL_DIR/sac+logos+ava1-l14-linearMSE.pth or a download.
    weights: str | None = None
    aggregate: Literal["mean", "min"] = "mean"
    min_score: float | None = Field(4.5, ge=0, le=10)  # the predictor's 1-10 scale
    batch_size: int = Field(16, ge=1)

    def outputs(self) -> list[pa.Field]:
        return [pa.field("aesthetic_score", pa.float64())]

    def head_ref(self) -> ModelRef:
        return ModelRef(name=HEAD_NAME, stage=self.name, local_path=self.weights, url=HEAD_URL)

    def models(self) -> list[ModelRef]:
        return [self.clip.ref(self.name), self.head_ref()]

    def filter_rules(self) -> list[str]:
        return [] if self.min_score is None else [f"aesthetic_score >= {self.min_score}"]

    def setup(self) -> None:
        import torch

        state = torch.load(fetch(self.head_ref()), map_location="cpu", weights_only=True)
        self._head = aesthetic_head(int(state["layers.0.weight"].shape[1]))
        self._head.load_state_dict(state)
        self._head.eval()
        self._encoder: ClipEncoder | None = None

    def _clip(self) -> ClipEncoder:
        if self._encoder is None:
            self._encoder = ClipEncoder(self.clip, self.name)
        return self._encoder

    def process_batch(self, clips: list[dict]) -> list[dict]:
        import torch

        embs = frame_embeddings(clips, self.clip, self._clip)
        present = [e for e in embs if e is not None]
        if present and present[0].shape[1] != self._head.layers[0].in_features:
            raise ValueError(
                f"the aesthetic head takes {self._head.layers[0].in_features}-d embeddings but CLIP "
                f"'{self.clip.model}' gives {present[0].shape[1]}-d (the LAION head needs ViT-L-14)"
            )
        if present:
            with torch.inference_mode():
                scores = self._head(torch.from_numpy(np.concatenate(present))).squeeze(1).double().numpy()
        agg = np.mean if self.aggregate == "mean" else np.min
        at = 0
        for clip, e in zip(clips, embs):
            if e is None:
                clip["aesthetic_score"] = None
                continue
            clip["aesthetic_score"] = float(agg(scores[at : at + len(e)]))
            at += len(e)
        return clips
