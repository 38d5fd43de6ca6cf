"""`curate sample`: mp4s generated from prompts with a checkpoint's EMA weights."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from curate.train.checkpoint import load_checkpoint
from curate.train.config import TrainConfig
from curate.train.flow import sample
from curate.train.model import DiTConfig, VideoDiT
from curate.train.text import TextEncoder
from curate.window import encode_mp4


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:48] or "empty"


def generate(
    checkpoint: str | Path,
    prompts: list[str],
    out_dir: str | Path,
    steps: int = 30,
    guidance: float = 4.0,
    seed: int = 0,
    size: tuple[int, int, int] | None = None,
    fps: float | None = None,
    device: str | None = None,
) -> list[Path]:
    """One mp4 per prompt, `size` = (frames, height, width) (default: the run's first bucket)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    state = load_checkpoint(checkpoint, device)
    cfg = TrainConfig.model_validate(state["config"])
    dit = state["dit"]
    model = VideoDiT(DiTConfig(**{**dit, "patch": tuple(dit["patch"])})).to(device).eval()
    model.load_state_dict(state["ema"])
    encoder = TextEncoder(cfg.text.path, cfg.text.max_length, device)
    frames, height, width = size or cfg.data.buckets[0]
    text, mask = encoder.encode(prompts)
    null_text, null_mask = encoder.encode([""])
    gen = torch.Generator(device=device).manual_seed(seed)
    shape = (len(prompts), 3, frames, height, width)
    videos = sample(model, shape, text, mask, null_text, null_mask, steps, guidance, gen)
    pixels = ((videos + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rate = fps or cfg.data.fps
    paths = []
    for i, (prompt, video) in enumerate(zip(prompts, pixels)):
        path = out / f"{i:03d}_{_slug(prompt)}.mp4"
        pictures = ((j / rate, f) for j, f in enumerate(video))
        encode_mp4(pictures, str(path), len(video) / rate, out_fps=rate, crf=18, preset="veryfast")
        paths.append(path)
    return paths
