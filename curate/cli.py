"""`curate` command line: run, validate, models, report, eval-shots, dedup, and the trainer's shard/train/sample."""

from __future__ import annotations

import argparse
import sys

from curate.config import ConfigError, load_config


def fail(msg: str, code: int = 2) -> int:
    print(f"curate: error: {msg}", file=sys.stderr)
    return code


def cmd_validate(args) -> int:
    try:
        cfg = load_config(args.pipeline, args.set)
    except ConfigError as e:
        return fail(str(e))
    from curate.engine import pipeline_stages

    names = ["split"] + [s.name for s in pipeline_stages(cfg)]
    print(f"{args.pipeline}: ok ({' -> '.join(names)})")
    return 0


def cmd_models(args) -> int:
    try:
        cfg = load_config(args.pipeline, args.set)
    except ConfigError as e:
        return fail(str(e))
    from curate.engine import model_refs, pipeline_stages
    from curate.models import how_to_provide, resolve

    refs = model_refs(cfg, pipeline_stages(cfg))
    if not refs:
        print("this pipeline uses no model weights")
        return 0
    missing = 0
    for ref in refs:
        r = resolve(ref)
        state = "available" if r.path else ("download" if r.available else "MISSING")
        where = r.path or r.detail
        print(f"{ref.stage:<18} {ref.name:<40} {state:<10} {r.source}: {where}")
        if not r.available:
            missing += 1
            print(f"{'':<18} -> {how_to_provide(ref)}")
    return 1 if missing else 0


def cmd_run(args) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from curate.models import ModelNotFound

    try:
        cfg = load_config(args.pipeline, args.set)
        from curate.engine import run_pipeline

        # run_pipeline resolves every model before any work: a missing one ends here in one line.
        summary = run_pipeline(cfg, address=args.address)
    except (ConfigError, ModelNotFound) as e:
        return fail(str(e))
    except (BotoCoreError, ClientError) as e:
        # Wrong keys, an unknown bucket or an unreachable endpoint: one line, not a traceback.
        return fail(f"S3: {e}")
    return summary.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curate", description="Video training-data curation on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    def pipeline_cmd(name: str, func, help: str):
        p = sub.add_parser(name, help=help)
        p.add_argument("pipeline", help="pipeline YAML")
        p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a config value")
        p.set_defaults(func=func)
        return p

    run = pipeline_cmd("run", cmd_run, "run a pipeline")
    run.add_argument("--address", default=None, help="join a Ray cluster: auto or ray://host:port (default: local Ray)")
    pipeline_cmd("validate", cmd_validate, "check a pipeline file without running it")
    pipeline_cmd("models", cmd_models, "list the models a pipeline needs and where they resolve")
    from curate import eval_shots, report
    from curate.train import cli as train_cli
    from filters import dedup

    report.register(sub)
    eval_shots.register(sub)
    dedup.register(sub)
    train_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
