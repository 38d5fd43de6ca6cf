"""`curate export`: the kept clips as the files a trainer reads, in one command from a run's OUTPUT.

Every exported clip becomes a standalone mp4, `DIR/videos/<clip_id>.mp4`: a clip file the run
already wrote (`clips.mode: mp4`) is linked (or copied across file systems); a reference clip (a
window of its source) is cut on the Ray cluster with the pipeline's own clip writer (upright,
square pixels, the source's presentation times), one task per source video. Then the format's
index is written:

- `opensora`: `DIR/opensora.csv`, the columns Open-Sora's dataset reads (hpcaitech/Open-Sora,
  tools/datasets/README.md): `path` (absolute), `text`, `num_frames`, `height`, `width`,
  `aspect_ratio`, `fps`, `resolution`, with Open-Sora's conventions: `aspect_ratio` = height /
  width, `resolution` = height x width, integer sizes, `text` the caption; `aes` (the LAION
  aesthetic score) and `match` (100 x clip_text_score, the CLIP logit scale Open-Sora's matching
  score uses) when the run scored them.
- `finetrainers`: the layouts of diffusers/finetrainers fine-tuning scripts (finetrainers
  docs/dataset/README.md): "two file" `DIR/videos.txt` (paths relative to DIR) and `DIR/prompt.txt`
  (one caption per line, same order) with DIR as the data root, and the caption beside each clip,
  `DIR/videos/<clip_id>.txt`, with DIR/videos as the root of its caption-file-pair layout.
- `csv`, `jsonl`: `DIR/clips.csv` / `DIR/clips.jsonl`, every manifest column but `clip_embedding`,
  with `path`, `clip_uri` and the size columns describing the exported file (in the csv, lists as
  JSON text and booleans as true/false), readable by pandas, DuckDB and polars.

Only kept clips are exported, narrowed further by `--where` rules (`aesthetic_score >= 5`). The
trainer formats need a caption: clips without one are left out and counted. `DIR/export.json`
records what was exported, so exporting again into DIR replaces the previous export (clip files it
no longer holds are deleted once the new index is written); any other non-empty DIR is refused.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from functools import partial
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, field_validator

from curate.config import ConfigError, S3Config
from curate.record import clip_file
from curate.storage import Store, is_s3, local_copy

Format = Literal["opensora", "finetrainers", "csv", "jsonl"]
FORMATS = get_args(Format)
TRAINER_FORMATS = ("opensora", "finetrainers")
# Large and of no use outside curate's own stages (dedup): never exported.
_SKIP = {"clip_embedding"}
# What a cutting task needs of each clip.
_WINDOW = ("clip_id", "source_uri", "stream_index", "pts_offset_s", "start_s", "end_s", "num_frames")
MARKER = "export.json"


class ExportError(Exception):
    """The export cannot start: no committed manifest, a rule on a column the manifest lacks, or a
    destination that holds something other than an earlier export."""


class ExportConfig(BaseModel):
    """`curate export` options (`--format`, `--where`, `--to`, and `--set s3.endpoint_url=...`)."""

    model_config = ConfigDict(extra="forbid")

    format: Format
    # Extra rules on manifest columns on top of `kept`, e.g. "aesthetic_score >= 5".
    rules: list[str] = []
    # Export root (local or s3://); default OUTPUT/export/FORMAT.
    to: str | None = None
    # For the OUTPUT, its sources and the export root.
    s3: S3Config = S3Config()

    @field_validator("rules")
    @classmethod
    def _rules(cls, rules: list[str]) -> list[str]:
        from filters.filter import normalise_rule

        return [normalise_rule(r) for r in rules]


def caption_line(row: dict) -> str:
    """The caption on one line (prompt.txt is line-aligned), or "" when there is none."""
    return " ".join((row.get("caption") or "").split())


def select_rows(output: str, cfg: ExportConfig) -> list[dict]:
    """Kept clips of OUTPUT passing `cfg.rules`, sorted by clip id (ExportError: no manifest, or a
    rule on a column it lacks)."""
    from filters.filter import parse_rule

    from curate.shard import read_manifest, select_clips

    try:
        table = read_manifest(output, cfg.s3)
    except FileNotFoundError as e:
        raise ExportError(str(e)) from None
    for rule in cfg.rules:
        if parse_rule(rule)[0] not in table.column_names:
            raise ExportError(f"--where {rule}: the clips manifest has no column '{parse_rule(rule)[0]}'")
    return select_clips(table.drop_columns([c for c in _SKIP if c in table.column_names]), cfg.rules)


def cut_windows(item: dict, dest: str, s3_json: str) -> list[dict]:
    """Ray Data task: cut the windows of one source into `dest/videos/<clip_id>.mp4`; one result
    per window: the file's measured `num_frames`, `width`, `height`, `fps`, `duration_s`, or an
    `error` (the other windows are still cut)."""
    from curate.window import WindowReader, write_clip

    windows = item["windows"]
    s3 = S3Config.model_validate_json(s3_json)
    store = Store(dest, s3)
    out = [{"clip_id": w["clip_id"], "num_frames": None, "width": None, "height": None, "fps": None,
            "duration_s": None, "error": None} for w in windows]
    try:
        with local_copy(windows[0]["source_uri"], s3) as src, tempfile.TemporaryDirectory(prefix="curate-export-") as tmp:
            with WindowReader(src, windows[0]["stream_index"], windows[0]["pts_offset_s"]) as reader:
                for w, got in zip(windows, out):
                    local = os.path.join(tmp, f"{w['clip_id']}.mp4")
                    try:
                        got.update(write_clip(reader, w["start_s"], w["end_s"], local))
                        if got["num_frames"] != w["num_frames"]:
                            raise ValueError(f"decoded {got['num_frames']} of its {w['num_frames']} frames")
                        store.upload_file(f"videos/{w['clip_id']}.mp4", local)
                    except Exception as e:  # one window's failure is reported; the others are still cut
                        got["error"] = f"{type(e).__name__}: {e}"
                    finally:
                        if os.path.exists(local):
                            os.remove(local)
    except Exception as e:  # the source itself (gone, unreadable, not a video): each window says so
        for got in out:
            got["error"] = got["error"] or f"{type(e).__name__}: {e}"
    return out


def _link_or_copy(src: str, store: Store, rel: str, s3: S3Config) -> None:
    if not is_s3(src) and not store.s3:
        dest = store.uri(rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.exists(dest):
            os.remove(dest)
        try:
            os.link(src, dest)  # the same file system: no second copy of the media
        except OSError:
            shutil.copyfile(src, dest)
        return
    with local_copy(src, s3) as path:
        store.upload_file(rel, path)


def materialise(rows: list[dict], store: Store, s3: S3Config, address: str | None, echo=print) -> tuple[list[dict], list[str]]:
    """Every row's clip as `videos/<clip_id>.mp4` under `store`. Returns the exported rows, which
    now describe those files (`path`, `clip_uri`, sizes, frame count, `fps`, `duration_s`), and the
    failures (`clip_id: reason`). Reference windows are cut as a Ray job (Ray is joined or started
    only then: connect_ray)."""
    groups: dict[str, list[dict]] = {}
    measured: dict[str, dict] = {}  # clip id -> what its exported file holds (clip files: the row's own)
    failed: list[str] = []
    for r in rows:
        existing = clip_file(r)
        if not existing:
            groups.setdefault(r["source_uri"], []).append({k: r.get(k) for k in _WINDOW})
            continue
        try:
            _link_or_copy(existing, store, f"videos/{r['clip_id']}.mp4", s3)
            measured[r["clip_id"]] = {}
        except Exception as e:  # a clip file that went missing: this clip fails, the rest goes on
            failed.append(f"{r['clip_id']}: {type(e).__name__}: {e}")
    if groups:
        from curate.engine import connect_ray

        connect_ray(address)
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
        items = ray.data.from_items([{"windows": g} for g in groups.values()], override_num_blocks=len(groups))
        total, done = sum(len(g) for g in groups.values()), 0
        for got in items.flat_map(partial(cut_windows, dest=store.root, s3_json=s3.model_dump_json()), num_cpus=1).iter_rows():
            if got["error"]:
                failed.append(f"{got['clip_id']}: {got['error']}")
            else:
                measured[got["clip_id"]] = {k: got[k] for k in ("num_frames", "width", "height", "fps", "duration_s")}
            done += 1
            if done % 50 == 0 or done == total:
                echo(f"curate: export: {done}/{total} windows cut")
    exported = []
    for r in rows:
        if r["clip_id"] not in measured:
            continue
        uri = store.uri(f"videos/{r['clip_id']}.mp4")
        r = {**r, **measured[r["clip_id"]], "path": uri, "clip_uri": uri}
        r["aspect_ratio"] = r["width"] / r["height"]
        exported.append(r)
    return exported, failed


def opensora_rows(rows: list[dict]) -> list[dict]:
    """Open-Sora's columns and conventions (see the module docstring)."""
    has_aes = any(r.get("aesthetic_score") is not None for r in rows)
    has_match = any(r.get("clip_text_score") is not None for r in rows)
    out = []
    for r in rows:
        h, w = int(r["height"]), int(r["width"])
        o = {"path": r["path"], "text": caption_line(r), "num_frames": int(r["num_frames"]), "height": h, "width": w,
             "aspect_ratio": h / w, "fps": float(r["fps"]), "resolution": h * w}
        if has_aes:
            o["aes"] = r.get("aesthetic_score")
        if has_match:
            o["match"] = None if r.get("clip_text_score") is None else 100 * r["clip_text_score"]
        out.append(o)
    return out


def _csv_value(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v


def _csv_bytes(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["path"], lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _csv_value(v) for k, v in r.items()})
    return buf.getvalue().encode("utf-8")


def _json_value(v):
    return None if isinstance(v, float) and math.isnan(v) else v


def write_index(rows: list[dict], fmt: str, store: Store) -> list[str]:
    """The format's index files under the export root; returns their names."""
    if fmt == "opensora":
        store.write_bytes("opensora.csv", _csv_bytes(opensora_rows(rows)))
        return ["opensora.csv"]
    if fmt == "finetrainers":
        for r in rows:
            store.write_bytes(f"videos/{r['clip_id']}.txt", caption_line(r).encode("utf-8"))
        store.write_bytes("videos.txt", "".join(f"videos/{r['clip_id']}.mp4\n" for r in rows).encode("utf-8"))
        store.write_bytes("prompt.txt", "".join(caption_line(r) + "\n" for r in rows).encode("utf-8"))
        return ["videos.txt", "prompt.txt", "videos/*.txt"]
    if fmt == "csv":
        store.write_bytes("clips.csv", _csv_bytes(rows))
        return ["clips.csv"]
    lines = (json.dumps({k: _json_value(v) for k, v in r.items()}) + "\n" for r in rows)
    store.write_bytes("clips.jsonl", "".join(lines).encode("utf-8"))
    return ["clips.jsonl"]


def _previous(store: Store) -> list[str]:
    """The files of the export already in `store`, clips and index (ExportError if it holds anything else)."""
    marker = store.read_if_exists(MARKER)
    if marker is not None:
        earlier = json.loads(marker)
        return earlier["files"] + earlier.get("index", [])
    if store.s3:
        anything = bool(store.list("") or store.list("videos"))
    else:
        anything = os.path.isdir(store.root) and bool(os.listdir(store.root))
    if anything:
        raise ExportError(f"--to {store.root}: not empty and not an earlier export; choose another --to or remove it")
    return []


def export(output: str, cfg: ExportConfig, address: str | None = None, echo=print) -> dict:
    """Export a finished OUTPUT's kept clips (passing `cfg.rules`) in `cfg.format`. Returns what
    was done: `clips` exported, `failed` (`clip_id: reason`), `uncaptioned` (left out of a trainer
    format), `files` (the index), `to` and `wall_s`."""
    t0 = time.perf_counter()
    dest = cfg.to or f"{output.rstrip('/')}/export/{cfg.format}"
    dest = dest if is_s3(dest) else os.path.abspath(dest)  # Open-Sora reads paths from its working directory
    store = Store(dest, cfg.s3)
    previous = _previous(store)
    rows = select_rows(output, cfg)
    uncaptioned = 0
    if cfg.format in TRAINER_FORMATS:
        captioned = [r for r in rows if caption_line(r)]
        uncaptioned = len(rows) - len(captioned)
        rows = captioned
    echo(f"curate: export: {len(rows)} kept clips to export" + (f" ({uncaptioned} without a caption left out)" if uncaptioned else ""))
    exported, failed = materialise(rows, store, cfg.s3, address, echo)
    files = write_index(exported, cfg.format, store)
    exts = ("mp4", "txt") if cfg.format == "finetrainers" else ("mp4",)
    kept = [f"videos/{r['clip_id']}.{ext}" for r in exported for ext in exts]
    index = [f for f in files if "*" not in f]
    store.write_bytes(MARKER, json.dumps({"source": output, "format": cfg.format, "rules": cfg.rules,
                                         "clips": len(exported), "index": index, "files": kept}, indent=1).encode("utf-8"))
    for rel in sorted(set(previous) - set(kept) - set(index)):  # an earlier export's clips and index, if other
        store.delete(rel)
    return {"clips": len(exported), "failed": failed, "uncaptioned": uncaptioned, "files": files, "to": dest,
            "wall_s": time.perf_counter() - t0}


def cmd_export(args) -> int:
    """Exit codes: 0 every selected clip exported; 3 some could not be cut (listed); 2 bad options,
    no committed manifest, or a --to that holds something else."""
    from curate.cli import console, fail, say_log
    from curate.config import load_options

    try:
        cfg = load_options(ExportConfig, args.set, "export", format=args.format, rules=args.where or None, to=args.to)
    except ConfigError as e:
        return fail(str(e))
    try:
        with console(args.output, args.verbose, "export") as (_, log_path):
            got = export(args.output, cfg, args.address)
    except ExportError as e:
        return fail(str(e))
    for f in got["failed"][:20]:
        print(f"curate: export: failed: {f}", file=sys.stderr)
    if got["uncaptioned"]:
        print(f"curate: export: {got['uncaptioned']} kept clips have no caption and are not in the {cfg.format} export "
              "(a trainer needs text; --format csv or jsonl exports them)", file=sys.stderr)
    print(f"curate: exported {got['clips']} clips as {cfg.format} to {got['to']} ({', '.join(got['files'])}) "
          f"in {got['wall_s']:.1f}s" + (f"; {len(got['failed'])} failed" if got["failed"] else ""))
    say_log(log_path)
    return 3 if got["failed"] else 0


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", help="the kept clips as clip files plus a trainer's index (Open-Sora, finetrainers, csv, jsonl)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("output", help="a finished run's OUTPUT (directory or s3:// prefix)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--where", action="append", default=[], metavar="RULE",
                   help="an extra rule on a column, e.g. 'aesthetic_score >= 5' (repeatable)")
    p.add_argument("--to", default=None, metavar="DIR", help="export root (default OUTPUT/export/FORMAT)")
    p.add_argument("--address", default=None, help="Ray cluster to cut reference clips on (default: an embedded local Ray)")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="e.g. s3.endpoint_url=http://...")
    p.add_argument("--verbose", action="store_true", help="show Ray's own log lines instead of writing them to OUTPUT/logs/")
    p.set_defaults(func=cmd_export)
    return p
