"""`curate shard`, `curate train` and `curate sample`; `register()` adds them to the main parser."""

from __future__ import annotations

from curate.cli import fail
from curate.config import ConfigError, load_options


def cmd_shard(args) -> int:
    from curate.shard import ShardConfig, write_shards

    try:
        cfg = load_options(ShardConfig, args.set, "shard", out=args.out or None, target_size=args.target_size or None)
    except ConfigError as e:
        return fail(str(e))
    try:
        summary = write_shards(args.output, cfg)
    except FileNotFoundError as e:
        return fail(str(e), 1)
    print(f"{summary['clips']} clips in {summary['shards']} shards, {summary['buckets']} buckets -> {summary['out']}")
    return 0


def cmd_train(args) -> int:
    from curate.train.config import load_train_config

    try:
        cfg = load_train_config(args.config, args.set)
    except ConfigError as e:
        return fail(str(e))
    from curate.models import ModelNotFound

    try:
        if cfg.ray.num_workers > 1 or cfg.ray.address:
            from curate.train.ray_train import run

            metrics = run(cfg, args.resume)
        else:
            from curate.train.loop import train

            metrics = train(cfg, args.resume)
    except (ModelNotFound, FileNotFoundError, ValueError) as e:
        return fail(str(e), 1)
    print(f"done at step {metrics.get('step')}: {metrics}")
    return 0


def cmd_sample(args) -> int:
    from curate.train.checkpoint import resolve_checkpoint
    from curate.train.generate import generate

    try:
        ckpt = resolve_checkpoint(args.checkpoint, args.checkpoint)
    except FileNotFoundError as e:
        return fail(str(e))
    shape = tuple(args.shape) if args.shape else None
    paths = generate(ckpt, args.prompt, args.out, args.steps, args.guidance, args.seed, shape, args.fps, args.device)
    for p in paths:
        print(p)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("shard", help="write WebDataset shards of a finished run's kept clips")
    p.add_argument("output", help="the pipeline's OUTPUT directory or s3:// prefix")
    p.add_argument("--out", default=None, help="shard directory (default: OUTPUT/shards)")
    p.add_argument("--target-size", default=None, help="close a shard at this size, e.g. 256MB or 1GiB")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any shard option, e.g. workers=4")
    p.set_defaults(func=cmd_shard)

    p = subparsers.add_parser("train", help="train the bundled video DiT on curated clips")
    p.add_argument("config", help="training YAML")
    p.add_argument("--resume", default=None, help="'latest' (of run_dir), a checkpoint file or a run directory")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a config value")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("sample", help="generate mp4s from prompts with a checkpoint's EMA weights")
    p.add_argument("--checkpoint", required=True, help="a checkpoint file, or a run directory (its latest)")
    p.add_argument("--prompt", action="append", required=True, help="a caption; repeat for several videos")
    p.add_argument("--out", required=True, help="directory for the mp4s")
    p.add_argument("--steps", type=int, default=30, help="Euler steps (default 30)")
    p.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=int, nargs=3, metavar=("FRAMES", "HEIGHT", "WIDTH"), help="default: first bucket")
    p.add_argument("--fps", type=float, default=None, help="frame rate of the mp4s (default: data.fps)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when present)")
    p.set_defaults(func=cmd_sample)
