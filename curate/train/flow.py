"""Rectified flow: the straight path x_t = (1 - t) x0 + t noise, and a network that predicts its velocity.

Training draws t from a logit-normal (more weight mid-path, where the velocity is hardest to
guess); sampling integrates the velocity from pure noise at t = 1 back to data at t = 0 with Euler
steps and classifier-free guidance. The held-out loss uses a fixed grid of t and fixed noise, so
two evaluations of the same weights give the same number.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logit_normal(n: int, mean: float, std: float, generator: torch.Generator, device) -> torch.Tensor:
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device))


def flow_loss(model, x0, text, mask, t, noise) -> torch.Tensor:
    """Mean squared error between predicted and true velocity (noise - x0) at times t."""
    tb = t.view(-1, *([1] * (x0.dim() - 1)))
    xt = (1 - tb) * x0 + tb * noise
    return F.mse_loss(model(xt, t, text, mask).float(), (noise - x0).float())


@torch.no_grad()
def grid_loss(model, x0, text, mask, timesteps: int, seed: int = 0) -> list[float]:
    """Loss at each of `timesteps` evenly spaced t in (0, 1), with noise fixed by `seed`."""
    g = torch.Generator(device=x0.device).manual_seed(seed)
    noise = torch.randn(x0.shape, generator=g, device=x0.device)
    grid = (torch.arange(timesteps, dtype=torch.float32) + 0.5) / timesteps
    out = []
    for t in grid.tolist():
        tt = torch.full((x0.shape[0],), t, device=x0.device)
        out.append(flow_loss(model, x0, text, mask, tt, noise).item())
    return out


@torch.no_grad()
def sample(model, shape, text, mask, null_text, null_mask, steps: int, guidance: float, generator) -> torch.Tensor:
    """Videos in [-1, 1] from noise: `steps` Euler steps, v = v_null + guidance * (v_text - v_null)."""
    x = torch.randn(shape, generator=generator, device=text.device)
    b = shape[0]
    both_text, both_mask = _pair(text, mask, null_text.expand(b, -1, -1), null_mask.expand(b, -1))
    ts = torch.linspace(1.0, 0.0, steps + 1, device=text.device)
    for i in range(steps):
        t = ts[i].expand(2 * b)
        v_text, v_null = model(torch.cat([x, x]), t, both_text, both_mask).float().chunk(2)
        v = v_null + guidance * (v_text - v_null)
        x = x + (ts[i + 1] - ts[i]) * v
    return x.clamp(-1, 1)


def _pair(a, a_mask, b, b_mask):
    """Stack two token batches of different lengths along the batch, padding the shorter."""
    n = max(a.shape[1], b.shape[1])
    a, b = F.pad(a, (0, 0, 0, n - a.shape[1])), F.pad(b, (0, 0, 0, n - b.shape[1]))
    a_mask, b_mask = F.pad(a_mask, (0, n - a_mask.shape[1])), F.pad(b_mask, (0, n - b_mask.shape[1]))
    return torch.cat([a, b]), torch.cat([a_mask, b_mask])
