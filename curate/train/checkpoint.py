"""Training checkpoints: everything a run needs to continue, in one file written atomically.

`RUN_DIR/checkpoints/step_000001000.pt` holds the model, its EMA, the optimizer, the step, the
sampler position, every rank's RNG state and the training config. It is written to a temporary
name, flushed and renamed, so a run killed mid-write leaves the previous checkpoint intact; only
the newest `keep` are kept.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import torch

_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_dir(run_dir: str) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str) -> list[Path]:
    """Committed checkpoints, oldest first."""
    d = checkpoint_dir(run_dir)
    found = [(int(m.group(1)), p) for p in d.glob("step_*.pt") if (m := _NAME.match(p.name))] if d.is_dir() else []
    return [p for _, p in sorted(found)]


def resolve_checkpoint(run_dir: str, resume: str) -> Path | None:
    """`latest` (None when the run has none yet: a fresh start), a checkpoint file or a run directory."""
    if resume == "latest":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    p = Path(resume)
    if p.is_dir():
        found = list_checkpoints(str(p))
        if not found:
            raise FileNotFoundError(f"no checkpoints under {p}")
        return found[-1]
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    return p


def save_checkpoint(run_dir: str, step: int, state: dict, keep: int) -> Path:
    d = checkpoint_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    dest = d / f"step_{step:09d}.pt"
    tmp = d / f".{dest.name}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dest)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return dest


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    # weights_only: our own files hold only tensors, numbers, strings and plain containers.
    return torch.load(path, map_location=device, weights_only=True)
