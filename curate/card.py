"""OUTPUT/README.md: a run's output described as a dataset, in the Hugging Face Hub's card format.

Its YAML header declares two configs, `clips` (the default) and `videos`, each the Parquet parts of
its manifest, so `datasets.load_dataset(OUTPUT, "clips")` (or `load_dataset(OUTPUT)`) reads the
manifest with every score, and the folder can be pushed to a Hub as it is: clip files, shards and
their `index.parquet` are never part of a config. The body gives the funnel, the filter rules and
how many clips each one dropped, the models with their licences, the clip contract and the columns.

Counts are read from the committed manifest parts, a part and a few columns at a time (never all
rows at once); rules and models come from summary.json (`curate.engine.RunSummary`).
"""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.manifest import CLIPS_DIR, VIDEOS_DIR, committed_parts, part_schema
from curate.storage import Store

CARD = "README.md"
HEADER = f"""---
configs:
- config_name: clips
  data_files:
  - split: train
    path: {CLIPS_DIR}/*.parquet
  default: true
- config_name: videos
  data_files:
  - split: train
    path: {VIDEOS_DIR}/*.parquet
task_categories:
- text-to-video
tags:
- video
- curate
---
"""


def scan(store: Store, rel_dir: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Record batches of `columns` (those a part has) of every committed part under `rel_dir`, one
    part at a time (on S3 one part's bytes are held while it is read)."""
    for name in committed_parts(store):
        rel = f"{rel_dir}/{name}"
        parquet = pq.ParquetFile(io.BytesIO(store.read_bytes(rel)) if store.s3 else store.uri(rel))
        yield from parquet.iter_batches(columns=[c for c in columns if c in parquet.schema_arrow.names])


def _sum(array) -> int | float:
    return pc.sum(array).as_py() or 0


def funnel(store: Store) -> tuple[dict, Counter]:
    """(counts, filter reasons): videos, decoded, failed, scenes detected, clips, kept, kept_s (their
    length in seconds), stage_failed (clips a stage failed on); and how many clips failed each rule."""
    n = Counter()
    for b in scan(store, VIDEOS_DIR, ["status", "scenes"]):
        n["videos"] += b.num_rows
        n["decoded"] += _sum(pc.equal(b.column("status"), "ok"))
        n["scenes"] += _sum(pc.list_value_length(b.column("scenes")))
    reasons: Counter = Counter()
    for b in scan(store, CLIPS_DIR, ["kept", "duration_s", "filter_reasons", "errors"]):
        kept = pc.fill_null(b.column("kept"), False)
        n["clips"] += b.num_rows
        n["kept"] += _sum(kept)
        n["kept_s"] += _sum(pc.filter(b.column("duration_s"), kept))
        n["stage_failed"] += _sum(pc.greater(pc.fill_null(pc.list_value_length(b.column("errors")), 0), 0))
        reasons.update(pc.list_flatten(b.column("filter_reasons")).to_pylist())
    n["failed"] = n["videos"] - n["decoded"]
    return dict(n), reasons


def _cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def render(store: Store, summary: dict, rules: list[str]) -> str:
    """The card's text (Markdown with its YAML header)."""
    n, reasons = funnel(store)
    name = os.path.basename(store.root.rstrip("/")) or store.root
    out = [HEADER, f"# {name}\n", (
        "Video clips curated with curate: scene clips of the source videos with scores, filter "
        "decisions and captions. `clips/` holds one row per clip (kept or not), `videos/` one row "
        "per source video, as Parquet.\n"
    ), "```python\nfrom datasets import load_dataset\n\n"
       f'clips = load_dataset("{store.root}", "clips", split="train")  # or the Hub id of this folder\n'
       'kept = clips.filter(lambda c: c["kept"])\n'
       f'videos = load_dataset("{store.root}", "videos", split="train")\n```\n']

    kept_s = n.get("kept_s", 0)
    length = f"{kept_s / 3600:.2f} h" if kept_s >= 3600 else f"{kept_s / 60:.1f} min"
    out += ["## Funnel\n", "| step | count |", "|---|---|",
            f"| videos | {n.get('videos', 0)} ({n.get('decoded', 0)} decoded, {n.get('failed', 0)} failed) |",
            f"| scenes detected | {n.get('scenes', 0)} |",
            f"| clips | {n.get('clips', 0)} |",
            f"| kept | {n.get('kept', 0)} ({length}) |",
            f"| clips a stage failed on | {n.get('stage_failed', 0)} |", ""]

    out += ["## Filter rules\n", ", ".join(f"`{_cell(r)}`" for r in rules) or "none", "",
            "| rule failed | clips |", "|---|---|"]
    out += [f"| `{_cell(r)}` | {c} |" for r, c in reasons.most_common()] or ["| (none) | 0 |"]
    out.append("")

    models = summary.get("models") or []
    out += ["## Models\n", "| stage | model | source | licence |", "|---|---|---|---|"]
    out += [f"| {_cell(m.get('stage'))} | {_cell(m.get('name'))} | {_cell(m.get('source') or '')} | "
            f"{_cell(m.get('license') or 'not recorded: see the source')} |" for m in models] or ["| (none) | | | |"]
    if summary.get("detector"):
        out.append(f"\nShot detection: {summary['detector']}.")
    out.append("")

    out += ["## Reading a clip\n", (
        "`clip_uri` is the clip's own file, null until one exists: read it whole. Otherwise the clip "
        "is the frames of stream `stream_index` of `source_uri` whose presentation time lies in "
        "`[pts_offset_s + start_s, pts_offset_s + end_s)` seconds. `path` names the media the row "
        "describes (`clip_uri` if set, else `source_uri`); `num_frames`, `fps`, `width`, `height` "
        "(upright, square pixels), `aspect_ratio` (width / height) and `duration_s` describe it.\n"
    )]

    committed = committed_parts(store)
    if committed:
        out += ["## Columns\n"]
        for rel_dir in (CLIPS_DIR, VIDEOS_DIR):
            schema = part_schema(store, f"{rel_dir}/{committed[0]}")
            out.append(f"`{rel_dir}`: " + ", ".join(f"`{f.name}` ({f.type})" for f in schema) + "\n")

    out += ["## Licence\n", (
        "The clips are windows of (or cut from) the source videos listed in `videos/`; their "
        "licences are those of the sources, which curate does not record. The models' licences are "
        "above.\n"
    )]
    return "\n".join(out)


def write_card(store: Store, summary: dict, rules: list[str]) -> str:
    """Write OUTPUT/README.md; returns its location."""
    store.write_bytes(CARD, render(store, summary, rules).encode("utf-8"))
    return store.uri(CARD)
