"""`curate` command line: run, validate, models, report, export, eval-shots, dedup, and the trainer's shard/train/sample."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

from curate.config import ConfigError, load_config
from curate.progress import Progress, quiet_ray
from curate.storage import is_s3


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


@contextlib.contextmanager
def console(output: str, verbose: bool, command: str = "run"):
    """(stream for curate's own progress, path of Ray's log or None): Ray's log lines go to
    <command>-*.log in `_log_dir(output)` unless `verbose`; the log is removed if nothing was
    written to it."""
    if verbose:
        yield sys.stderr, None
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_path = os.path.join(_log_dir(output), f"{command}-{stamp}-{os.getpid()}.log")
    with quiet_ray(log_path) as stream:
        yield stream, log_path


def _log_dir(output: str) -> str:
    """OUTPUT/logs, or ~/.cache/curate/logs for an S3 output or one that cannot hold it (a file, a
    read-only place): the command's own checks report those, in one line, not the log's."""
    if not is_s3(output):
        local = os.path.join(output, "logs")
        with contextlib.suppress(OSError):
            os.makedirs(local, exist_ok=True)
            if os.access(local, os.W_OK):
                return local
    return os.path.join(os.path.expanduser("~/.cache/curate"), "logs")


def say_log(log_path: str | None) -> None:
    """Name the log Ray's lines went to, if any were written."""
    if log_path and os.path.exists(log_path):
        print(f"curate: Ray's own log lines are in {log_path} (--verbose shows them)")


def cmd_run(args) -> int:
    """Exit codes: 0 all done; 3 some inputs failed; 2 bad configuration, a missing model, an
    unusable output, one another run holds or one whose manifest parts have other columns (without
    --allow-schema-change), found before any work; 1 the run stopped midway
    (disk full, S3 down past the retry budget, lease taken over): nothing half-written, rerun."""
    from botocore.exceptions import BotoCoreError, ClientError

    from curate.manifest import LeaseHeld, LeaseLost
    from curate.models import ModelNotFound
    from curate.storage import S3Unavailable

    try:
        cfg = load_config(args.pipeline, args.set)
        from curate.engine import run_pipeline

        # run_pipeline resolves every model before any work: a missing one ends here in one line.
        with console(cfg.output.path, args.verbose) as (stream, log_path):
            progress = Progress(live=stream.isatty(), stage_rates=args.stage_rates, stream=stream)
            summary = run_pipeline(cfg, address=args.address, retry_failed=args.retry_failed, force=args.force,
                                   progress=progress, verbose=args.verbose, allow_schema_change=args.allow_schema_change)
        say_log(log_path)
    except (ConfigError, ModelNotFound, LeaseHeld) as e:
        return fail(str(e))
    except (S3Unavailable, LeaseLost) as e:
        return fail(f"{e}; rerun to resume", code=1)
    except (BotoCoreError, ClientError) as e:
        # Wrong keys, an unknown bucket or an unreachable endpoint: one line, not a traceback.
        return fail(f"S3: {e}")
    except OSError as e:  # a full disk or an output that became unwritable midway
        where = f"{e.filename}: " if e.filename else ""
        return fail(f"{where}{e.strerror or e}; nothing half-written is kept, rerun to resume", code=1)
    except Exception as e:
        from ray.exceptions import RayError

        if not isinstance(e, RayError):
            raise
        # The cluster failed under the run (nodes lost past Ray's retries): committed parts stay.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return fail(f"Ray: {type(e).__name__}: {first}; nothing half-written is kept, rerun to resume", code=1)
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
    run.add_argument(
        "--no-retry-failed", dest="retry_failed", action="store_false",
        help="keep earlier error rows instead of redoing videos that failed for a reason that may pass and clips a stage failed on",
    )
    run.add_argument("--force", action="store_true", help="take over the output from a run that still holds its lease")
    run.add_argument("--verbose", action="store_true", help="show Ray's own log lines instead of writing them to OUTPUT/logs/")
    run.add_argument("--stage-rates", action="store_true", help="show each stage's clips per second while the run goes")
    run.add_argument(
        "--allow-schema-change", action="store_true",
        help="resume into an output whose manifest parts have other columns (another stage list) by rewriting them to the union",
    )
    pipeline_cmd("validate", cmd_validate, "check a pipeline file without running it")
    pipeline_cmd("models", cmd_models, "list the models a pipeline needs and where they resolve")
    from curate import eval_shots, export, report
    from curate.train import cli as train_cli
    from filters import dedup

    report.register(sub)
    export.register(sub)
    eval_shots.register(sub)
    dedup.register(sub)
    train_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
