"""A pixel-space video DiT.

Video (B x 3 x T x H x W, in [-1, 1]) -> Conv3d patchify -> tokens on a T' x H' x W' grid with fixed
3-D sin-cos positions -> `depth` blocks that alternate spatial attention (within each frame) and
temporal attention (across frames at each position), each with cross-attention to the caption
tokens and an MLP -> adaLN final layer -> unpatchify. The timestep and the pooled caption condition
every block through adaLN-Zero; the modulation, the cross-attention output and the final layer
start at zero, so the untrained network is the identity through every block and predicts zero.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DiTConfig:
    hidden: int
    depth: int
    heads: int
    # Patch size over (frames, height, width).
    patch: tuple[int, int, int]
    mlp_ratio: float = 4.0
    in_channels: int = 3
    # Width of the caption tokens the text encoder produces.
    text_dim: int = 384

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, dict] = {
    # Seconds per step on a CPU; for tests and smoke runs.
    "tiny": dict(hidden=64, depth=2, heads=4, patch=(1, 4, 4)),
    # DiT-S and DiT-B widths, pixel patches of 2 frames x 8 x 8.
    "S": dict(hidden=384, depth=12, heads=6, patch=(2, 8, 8)),
    "B": dict(hidden=768, depth=12, heads=12, patch=(2, 8, 8)),
}


def dit_config(preset: str, text_dim: int, **overrides) -> DiTConfig:
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    values["patch"] = tuple(values["patch"])
    cfg = DiTConfig(text_dim=text_dim, **values)
    if cfg.hidden % cfg.heads:
        raise ValueError(f"hidden {cfg.hidden} is not divisible by heads {cfg.heads}")
    if cfg.depth % 2:
        raise ValueError(f"depth {cfg.depth} must be even (spatial and temporal blocks alternate)")
    return cfg


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    half = torch.arange(dim // 2, dtype=torch.float32, device=positions.device)
    freqs = torch.exp(-math.log(10000.0) * half / (dim // 2))
    angles = positions.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_3d(hidden: int, t: int, h: int, w: int) -> torch.Tensor:
    """(t*h*w) x hidden fixed positions; a third of the (even) channels per axis, the rest zero."""
    d = hidden // 6 * 2
    grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"), -1)
    grid = grid.reshape(-1, 3)
    emb = torch.cat([sincos_1d(d, grid[:, i]) for i in range(3)], dim=1)
    return F.pad(emb, (0, hidden - emb.shape[1]))


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000, as DiT scales its integer steps)."""
    return sincos_1d(dim, t * 1000.0)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head attention with RMS-normalised queries and keys (stable in bf16)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.q_norm = nn.RMSNorm(dim // heads)
        self.k_norm = nn.RMSNorm(dim // heads)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        b, n, d = x.shape
        context = x if context is None else context
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        attn_mask = None if mask is None else mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """adaLN-Zero block: self-attention over one axis, cross-attention to the caption, MLP."""

    def __init__(self, cfg: DiTConfig, temporal: bool):
        super().__init__()
        d = cfg.hidden
        self.temporal = temporal
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, cfg.heads)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.cross = Attention(d, cfg.heads)
        self.norm3 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x, c, text, text_mask, grid: tuple[int, int, int]):
        b, n, d = x.shape
        t, h, w = grid
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        y = modulate(self.norm1(x), shift1, scale1)
        if self.temporal:  # sequences of t frames at each of the h*w positions
            y = y.view(b, t, h * w, d).transpose(1, 2).reshape(b * h * w, t, d)
            y = self.attn(y).view(b, h * w, t, d).transpose(1, 2).reshape(b, n, d)
        else:  # sequences of h*w positions within each of the t frames
            y = self.attn(y.reshape(b * t, h * w, d)).view(b, n, d)
        x = x + gate1[:, None] * y
        x = x + self.cross(self.norm2(x), text, text_mask)
        return x + gate2[:, None] * self.mlp(modulate(self.norm3(x), shift2, scale2))


class VideoDiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.hidden, cfg.patch
        self.patchify = nn.Conv3d(cfg.in_channels, d, kernel_size=p, stride=p)
        self.t_embed = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.text_proj = nn.Sequential(nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, d))
        self.pooled_proj = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(Block(cfg, temporal=i % 2 == 1) for i in range(cfg.depth))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.final = nn.Linear(d, math.prod(p) * cfg.in_channels)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patchify.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patchify.bias)
        nn.init.normal_(self.t_embed[0].weight, std=0.02)
        nn.init.normal_(self.t_embed[2].weight, std=0.02)
        zero = [self.final_ada[1], self.final]
        zero += [m for blk in self.blocks for m in (blk.ada[1], blk.cross.out)]
        for m in zero:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Velocity for video `x` at times `t` (B,), given caption tokens (B x L x text_dim) and mask."""
        b, ch, frames, height, width = x.shape
        pt, ph, pw = self.cfg.patch
        if frames % pt or height % ph or width % pw:
            raise ValueError(f"input {frames}x{height}x{width} is not divisible by patch {self.cfg.patch}")
        tokens = self.patchify(x)
        grid = tuple(tokens.shape[2:])
        tokens = tokens.flatten(2).transpose(1, 2)
        tokens = tokens + sincos_3d(self.cfg.hidden, *grid).to(tokens)

        weights = text_mask.to(text.dtype)[..., None]
        pooled = (text * weights).sum(1) / weights.sum(1).clamp(min=1)
        c = self.t_embed(timestep_embedding(t, 256).to(x)) + self.pooled_proj(pooled)
        context = self.text_proj(text)
        for blk in self.blocks:
            tokens = blk(tokens, c, context, text_mask, grid)

        shift, scale = self.final_ada(c).chunk(2, dim=1)
        out = self.final(modulate(self.final_norm(tokens), shift, scale))
        gt, gh, gw = grid
        out = out.view(b, gt, gh, gw, pt, ph, pw, ch).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, ch, frames, height, width)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
