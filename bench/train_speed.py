"""Parameters and seconds per training step of the video DiT presets on this machine.

Two figures per preset: `model` times the optimisation step alone (forward, backward, clipping,
AdamW, EMA) on a fixed batch, so it is the network's cost; `loop` runs the real `curate train` loop
on a curated OUTPUT (decoding the clip windows, embedding captions, logging), timed after its first
log window. Run the quickstart pipeline first for the default OUTPUT.

    python bench/train_speed.py [--output out/quickstart] [--presets tiny,S] [--threads 2]
        [--shape tiny=8,32,64 --shape S=8,64,64] [--batch 2] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The smallest input each preset makes sense at: 8 frames, and tokens of 4x4 (tiny) or 2x8x8 (S, B) pixels.
SHAPES = {"tiny": (8, 32, 64), "S": (8, 64, 64), "B": (8, 64, 64)}


def model_step_time(preset: str, shape: tuple[int, int, int], batch: int, steps: int) -> tuple[int, float]:
    import torch

    from curate.train.config import TrainConfig
    from curate.train.flow import flow_loss
    from curate.train.loop import _ema_update, build_model
    from curate.train.model import count_params

    cfg = TrainConfig.model_validate({"run_dir": ".", "data": {"manifest": "."}, "model": {"preset": preset}})
    torch.manual_seed(0)
    model = build_model(cfg, text_dim=384)
    ema = build_model(cfg, text_dim=384).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, *shape).clamp(-1, 1)
    text, mask = torch.randn(batch, 12, 384), torch.ones(batch, 12, dtype=torch.bool)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        loss = flow_loss(model, x, text, mask, torch.rand(batch), torch.randn_like(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        _ema_update(ema, model, 0.999, i)
        times.append(time.perf_counter() - t0)
    params = count_params(model)
    return params, sorted(times[2:])[len(times[2:]) // 2]  # median after two warm-up steps


def loop_step_time(output: str, preset: str, shape: tuple[int, int, int], batch: int, steps: int) -> float:
    from curate.train.config import TrainConfig
    from curate.train.loop import train

    log_every = max(steps // 2, 1)
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = TrainConfig.model_validate(
            {
                "run_dir": run_dir,
                "max_steps": 2 * log_every,
                "log_every": log_every,
                "checkpoint_every": 10 * steps,
                "data": {"manifest": output, "buckets": [list(shape)], "batch_size": batch},
                "model": {"preset": preset},
            }
        )
        train(cfg)
        lines = open(os.path.join(run_dir, "metrics.jsonl")).read().splitlines()
    return json.loads(lines[-1])["s_per_step"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="out/quickstart", help="curated OUTPUT for the loop timing ('' to skip)")
    p.add_argument("--presets", default="tiny,S")
    p.add_argument("--shape", action="append", default=[], metavar="PRESET=F,H,W")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = dict(SHAPES)
    for item in args.shape:
        name, _, dims = item.partition("=")
        shapes[name] = tuple(int(d) for d in dims.split(","))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {args.batch}, {os.cpu_count()} cores")
    for preset in args.presets.split(","):
        shape = shapes[preset]
        params, model_s = model_step_time(preset, shape, args.batch, args.steps)
        line = f"{preset:>5}: {params / 1e6:7.2f}M params, input {shape[0]}x{shape[1]}x{shape[2]}, model {model_s:.3f} s/step"
        if args.output:
            line += f", loop {loop_step_time(args.output, preset, shape, args.batch, args.steps):.3f} s/step"
        print(line, flush=True)


if __name__ == "__main__":
    main()
