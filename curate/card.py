"""OUTPUT/README.md: a run's output described as a dataset, in the Hugging Face Hub's card format.

Its YAML header declares two configs, `clips` (the default) and `videos`, each the Parquet parts of
its manifest, so `datasets.load_dataset(OUTPUT, "clips")` (or `load_dataset(OUTPUT)`) reads the
manifest with every score, and the folder can be pushed to a Hub as it is: clip files, shards and
their `index.parquet` are never part of a config. The body gives the funnel, the filter rules and
how many clips each one dropped, the models with their licences, the clip contract and the columns.

Counts are those `curate.report.collect` streams from the committed manifest parts (never all
rows at once); models come from summary.json (`curate.engine.RunSummary`).
"""

from __future__ import annotations

import os

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


def _cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def render(store: Store, stats, summary: dict) -> str:
    """The card's text (Markdown with its YAML header), from the streamed `report.ManifestStats`."""
    name = os.path.basename(store.root.rstrip("/")) or store.root
    out = [HEADER, f"# {name}\n", (
        "Video clips curated with curate: scene clips of the source videos with scores, filter "
        "decisions and captions. `clips/` holds one row per clip (kept or not), `videos/` one row "
        "per source video, as Parquet.\n"
    ), "```python\nfrom datasets import load_dataset\n\n"
       f'clips = load_dataset("{store.root}", "clips", split="train")  # or the Hub id of this folder\n'
       'kept = clips.filter(lambda c: c["kept"])\n'
       f'videos = load_dataset("{store.root}", "videos", split="train")\n```\n']

    kept_s = stats.kept_s
    length = f"{kept_s / 3600:.2f} h" if kept_s >= 3600 else f"{kept_s / 60:.1f} min"
    out += ["## Funnel\n", "| step | count |", "|---|---|",
            f"| videos | {stats.videos} ({stats.videos_ok} decoded, {stats.videos - stats.videos_ok} failed) |",
            f"| scenes detected | {stats.scenes} |",
            f"| clips | {stats.clips} |",
            f"| kept | {stats.kept} ({length}) |",
            f"| clips a stage failed on | {stats.clip_errors} |", ""]

    out += ["## Filter rules\n", ", ".join(f"`{_cell(r)}`" for r in stats.rules) or "none", "",
            "| rule failed | clips |", "|---|---|"]
    out += [f"| `{_cell(r)}` | {c} |" for r, c in stats.reasons.most_common()] or ["| (none) | 0 |"]
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


def write_card(store: Store, stats, summary: dict) -> str:
    """Write OUTPUT/README.md from `report.ManifestStats` and summary.json's dict; returns its location."""
    store.write_bytes(CARD, render(store, stats, summary).encode("utf-8"))
    return store.uri(CARD)
