"""The train function: one process, or one rank of a Ray Train (torch.distributed) run.

Each step: a bucket batch of clips, captions dropped to "" with probability `text.dropout` and
embedded, logit-normal t, noise, rectified-flow loss (bf16 autocast on a GPU that supports it),
AdamW with gradient clipping and linear warmup, then the EMA. All randomness is either drawn from
one generator per rank, whose state is checkpointed, or derived from (seed, epoch, clip), so
`--resume latest` continues the very same loss curve.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from curate.train.checkpoint import list_checkpoints, load_checkpoint, resolve_checkpoint, save_checkpoint
from curate.train.config import TrainConfig
from curate.train.data import ClipDataset, collate, load_clips, split_holdout
from curate.train.flow import flow_loss, grid_loss, logit_normal
from curate.train.model import VideoDiT, count_params, dit_config
from curate.train.sampler import BucketBatchSampler
from curate.train.text import TextEncoder


def build_model(cfg: TrainConfig, text_dim: int) -> VideoDiT:
    m = cfg.model
    overrides = dict(hidden=m.hidden, depth=m.depth, heads=m.heads, patch=m.patch, mlp_ratio=m.mlp_ratio)
    return VideoDiT(dit_config(m.preset, text_dim, **overrides))


def autocast(cfg: TrainConfig, device: torch.device):
    """bf16 autocast on a GPU that has it (precision auto or bf16); fp32 everywhere else."""
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if cfg.precision == "bf16" and not cuda_bf16:
        raise ValueError("precision: bf16 needs a CUDA GPU with bf16 support (use auto or fp32)")
    if cfg.precision != "fp32" and cuda_bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate(model, dataset: ClipDataset, encoder: TextEncoder, cfg: TrainConfig, device) -> float:
    """Held-out rectified-flow loss on the fixed t grid, each clip with its own fixed noise."""
    losses = []
    for i in range(len(dataset)):
        item = dataset[(None, i)]
        text, mask = encoder.encode([item["caption"]])
        with autocast(cfg, device):
            per_t = grid_loss(model, item["video"][None].to(device), text, mask, cfg.flow.eval_timesteps, seed=i)
        losses.append(sum(per_t) / len(per_t))
    return sum(losses) / len(losses)


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    # Short warm-up of the decay so early EMA weights are not stuck at initialisation.
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - d)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines past the step a run starts from (a killed run logged past its last checkpoint)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in lines))


def train(
    cfg: TrainConfig,
    resume: str | None = None,
    device: torch.device | None = None,
    report: Callable[[dict], None] | None = None,
) -> dict:
    """Train to `cfg.max_steps`; returns the last logged metrics. `report` gets every log line on every rank."""
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run_dir = Path(cfg.run_dir)
    metrics_path = run_dir / "metrics.jsonl"

    rows = load_clips(cfg.data)
    train_rows, held_rows = split_holdout(rows, cfg.data.holdout)
    dataset = ClipDataset(train_rows, cfg.data, cfg.seed)
    held = ClipDataset(held_rows, cfg.data, cfg.seed)
    sampler = BucketBatchSampler(dataset.buckets, cfg.data.batch_size, cfg.seed, rank, world)
    if not sampler.epoch_batches(0):
        raise ValueError(
            f"{len(train_rows)} training clips: no bucket holds a full batch of "
            f"{cfg.data.batch_size} x {world} workers (lower data.batch_size or add clips)"
        )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.data.num_workers,
        persistent_workers=cfg.data.num_workers > 0,
        pin_memory=device.type == "cuda",
    )

    encoder = TextEncoder(cfg.text.path, cfg.text.max_length, device)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = build_model(cfg, encoder.dim).to(device)
    for shape in cfg.data.buckets:
        if any(n % p for n, p in zip(shape, model.cfg.patch)):
            patch = list(model.cfg.patch)
            raise ValueError(f"data.buckets: {list(shape)} is not divisible by the model's patch {patch}")
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay
    )
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 65_537 + rank)
    step, epoch, pos = 0, 0, 0

    if not resume and list_checkpoints(cfg.run_dir):
        raise ValueError(f"{cfg.run_dir} already holds checkpoints: pass --resume latest, or use a new run_dir")
    ckpt = resolve_checkpoint(cfg.run_dir, resume) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, device)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        step, (epoch, pos) = state["step"], state["sampler"]
        if len(state["rng"]) != world:
            raise ValueError(f"{ckpt} was written by {len(state['rng'])} workers, this run has {world}")
        gen.set_state(state["rng"][rank].to("cpu"))
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(metrics_path, step)
        params = count_params(model)
        print(
            f"model {cfg.model.preset}: {params / 1e6:.2f}M parameters; {len(train_rows)} train / "
            f"{len(held_rows)} held-out clips; {world} worker(s) on {device}; from step {step}",
            flush=True,
        )

    net = model
    if world > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def checkpoint() -> Path | None:
        rngs = [None] * world
        if world > 1:
            dist.all_gather_object(rngs, gen.get_state())
        else:
            rngs = [gen.get_state()]
        if rank != 0:
            return None
        state = {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "sampler": [epoch, pos],
            "rng": rngs,
            "dit": model.cfg.to_dict(),
            "config": cfg.model_dump(mode="json"),
        }
        return save_checkpoint(cfg.run_dir, step, state, cfg.keep_checkpoints)

    last: dict = {"step": step}
    tick, tick_step, loss_sum, loss_n = time.perf_counter(), step, 0.0, 0
    while step < cfg.max_steps:
        sampler.set_position(epoch, pos)
        for batch in loader:
            x = batch["video"].to(device, non_blocking=True)
            b = x.shape[0]
            drop = (torch.rand(b, generator=gen, device=device) < cfg.text.dropout).tolist()
            text, mask = encoder.encode(["" if d else c for c, d in zip(batch["caption"], drop)])
            t = logit_normal(b, cfg.flow.logit_mean, cfg.flow.logit_std, gen, device)
            noise = torch.randn(x.shape, generator=gen, device=device)
            with autocast(cfg, device):
                loss = flow_loss(net, x, text, mask, t, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            lr = cfg.optim.lr * min(1.0, (step + 1) / max(cfg.optim.warmup_steps, 1))
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            _ema_update(ema, model, cfg.optim.ema_decay, step)
            step, pos = step + 1, pos + 1
            loss_sum, loss_n = loss_sum + loss.detach(), loss_n + 1

            done = step >= cfg.max_steps
            eval_due = bool(held_rows) and ((cfg.eval_every and step % cfg.eval_every == 0) or done)
            if step % cfg.log_every == 0 or eval_due or done:
                mean = loss_sum / loss_n
                if world > 1:
                    dist.all_reduce(mean)
                    mean = mean / world
                now = time.perf_counter()
                last = {
                    "step": step,
                    "epoch": epoch,
                    "loss": round(float(mean), 6),
                    "grad_norm": round(float(grad_norm), 4),
                    "lr": lr,
                    "s_per_step": round((now - tick) / (step - tick_step), 4),
                }
                if eval_due and rank == 0:
                    last["eval_loss"] = round(evaluate(ema, held, encoder, cfg, device), 6)
                if rank == 0:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(last) + "\n")
                    print(json.dumps(last), flush=True)
                if report is not None:
                    report(last)
                tick, tick_step, loss_sum, loss_n = time.perf_counter(), step, 0.0, 0
            if step % cfg.checkpoint_every == 0 or done:
                path = checkpoint()
                if path is not None:
                    last["checkpoint"] = str(path)
            if done:
                break
        else:
            epoch, pos = epoch + 1, 0
    return last
