"""Tiny random-weight CLIP and LAION aesthetic head, saved as files the real loaders read.

CLIP ViT-L-14 and the aesthetic predictor cannot be downloaded in CI. The tests register a small
open_clip config (two-layer towers, 768-d embeddings like ViT-L-14 so the real head shape fits),
build it with pretrained=None, and save its state dict; the stages then load it through the model
resolver and open_clip exactly as they would load the real checkpoint. Scores are meaningless;
shapes, dtypes, normalisation, batching and determinism are real.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CONFIG = {
    "embed_dim": 768,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def make_tiny_clip(folder: Path, name: str = "TinyCLIP-test", seed: int = 0) -> dict:
    """Write `<name>.json` and `<name>.pt` into folder; returns the stages' `clip:` block for them."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"{name}.json"
    config.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    weights = folder / f"{name}.pt"
    torch.save(model.state_dict(), weights)
    return {"model": name, "pretrained": None, "weights": str(weights), "model_config": str(config)}


def make_aesthetic_head(path: Path, seed: int = 0) -> Path:
    """A random head with the predictor's exact state-dict keys and shapes (768-1024-128-64-16-1)."""
    from filters.aesthetic import aesthetic_head

    torch.manual_seed(seed)
    head = aesthetic_head(768)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(head.state_dict(), path)
    return path
