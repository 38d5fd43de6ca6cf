"""OUTPUT/report.html: what a run did, in one self-contained page.

The funnel (videos, scenes, clips, kept), a histogram of every score with its filter thresholds
drawn, the filter reasons, failed videos, stage throughput, and thumbnails (first, middle and last
frame) of a sample of kept and of filtered clips with their scores and captions. Everything is
read back from the committed manifests, so the page can be rebuilt at any time
(`curate report OUTPUT`) and shows exactly what the manifests hold. Images are inline JPEG and
plots inline SVG: the file opens anywhere, offline.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import html
import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate import manifest
from curate.card import write_card
from curate.record import CLIP_FIELDS
from curate.config import S3Config
from curate.storage import Store, is_s3, local_copy
from curate.window import WindowReader

# Base columns that are worth a histogram; every numeric column a stage adds gets one too.
_BASE_PLOTTED = ("duration_s",)
_BASE = {f.name for f in CLIP_FIELDS}
_OPS_DRAWN = (">=", "<=", ">", "<")


def _esc(x) -> str:
    return html.escape(str(x))


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def score_columns(schema: pa.Schema) -> list[str]:
    """Numeric columns worth a histogram: duration and every score a stage added."""
    return [
        f.name for f in schema
        if (f.name not in _BASE or f.name in _BASE_PLOTTED) and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))
    ]


def thresholds(rules: list[str]) -> dict[str, list[tuple[str, float]]]:
    """column -> [(op, value)] for the numeric comparison rules."""
    from filters.filter import parse_rule

    out: dict[str, list[tuple[str, float]]] = {}
    for r in rules:
        try:
            col, op, value = parse_rule(r)
        except ValueError:
            continue
        if op in _OPS_DRAWN and isinstance(value, float):
            out.setdefault(col, []).append((op, value))
    return out


def rules_from_reasons(reasons: Counter) -> list[str]:
    """The rules a run applied, as far as its filter reasons show them."""
    return sorted({r.removesuffix(" (missing)") for r in reasons})


class Histogram:
    """Counts of kept and filtered clips in `bins` equal bins over [lo, hi], filled a batch at a time."""

    def __init__(self, lo: float, hi: float, bins: int = 30):
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        self.edges = np.linspace(lo, hi, bins + 1)
        self.kept = np.zeros(bins, np.int64)
        self.filtered = np.zeros(bins, np.int64)

    def add(self, values, kept) -> None:
        vals = np.asarray(values, dtype=float)
        k = np.asarray(kept, dtype=bool)
        ok = np.isfinite(vals)
        self.kept += np.histogram(vals[ok & k], self.edges)[0]
        self.filtered += np.histogram(vals[ok & ~k], self.edges)[0]

    def svg(self, cuts: list[tuple[str, float]]) -> str:
        """Kept (green) and filtered (grey) clips stacked per bin, thresholds as red dashed lines."""
        W, H, PAD = 360, 150, 28
        if not (self.kept.sum() + self.filtered.sum()):
            return "<p class=muted>no values</p>"
        lo, hi, bins = float(self.edges[0]), float(self.edges[-1]), len(self.kept)
        hk, hf = self.kept, self.filtered
        top = max(int((hk + hf).max()), 1)
        bw = (W - 2 * PAD) / bins
        x = lambda v: PAD + (v - lo) / (hi - lo) * (W - 2 * PAD)  # noqa: E731
        y = lambda c: H - PAD - c / top * (H - 2 * PAD)  # noqa: E731
        parts = [f'<svg class=hist width="{W}" height="{H}" viewBox="0 0 {W} {H}" xmlns="http://www.w3.org/2000/svg">']
        for i in range(bins):
            x0 = PAD + i * bw
            if hf[i]:
                parts.append(f'<rect x="{x0:.1f}" y="{y(hf[i]):.1f}" width="{bw - 1:.1f}" height="{y(0) - y(hf[i]):.1f}" fill="#9aa3ad"/>')
            if hk[i]:
                parts.append(
                    f'<rect x="{x0:.1f}" y="{y(hf[i] + hk[i]):.1f}" width="{bw - 1:.1f}" height="{y(0) - y(hk[i]):.1f}" fill="#2e9e5b"/>'
                )
        parts.append(f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#333"/>')
        for v, anchor in ((lo, "start"), (hi, "end")):
            parts.append(f'<text x="{x(v):.1f}" y="{H - PAD + 14}" font-size="10" text-anchor="{anchor}">{_fmt(v)}</text>')
        parts.append(f'<text x="{PAD - 4}" y="{y(top) + 4:.1f}" font-size="10" text-anchor="end">{top}</text>')
        for op, v in cuts:
            parts.append(
                f'<line class=threshold x1="{x(v):.1f}" y1="{PAD - 12}" x2="{x(v):.1f}" y2="{H - PAD}" stroke="#d62728" stroke-width="2" stroke-dasharray="4 3"/>'
                f'<text x="{x(v):.1f}" y="{PAD - 15}" font-size="10" fill="#d62728" text-anchor="middle">{_esc(op)} {_fmt(v)}</text>'
            )
        parts.append("</svg>")
        return "".join(parts)


def histogram_svg(values: list[float], kept: list[bool], cuts: list[tuple[str, float]], bins: int = 30) -> str:
    """One histogram of `values` (kept green, filtered grey), its range widened to the thresholds."""
    vals = np.array(values, dtype=float)
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        return "<p class=muted>no values</p>"
    cut_values = [v for _, v in cuts]
    h = Histogram(min([float(vals.min())] + cut_values), max([float(vals.max())] + cut_values), bins)
    h.add(values, kept)
    return h.svg(cuts)


def _jpeg(rgb: np.ndarray, height: int = 96) -> str:
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode() if ok else ""


def clip_thumbnails(reader: WindowReader, row: dict, height: int = 96) -> list[np.ndarray]:
    """The frames on screen at the start, middle and just before the end of a clip, upright."""
    start, end = row["start_s"], row["end_s"]
    times = (start, (start + end) / 2, max(start, end - 1e-3))
    out = []
    for _, frame in reader.frames_at(times):
        w, h = reader.display_size(frame)
        out.append(reader.rgb(frame, (max(2, round(w * height / h)), height)))
    return out


def sample_key(clip_id: str) -> str:
    """Clips are sampled by the smallest hash of their id: the same sample every time, drawn while
    streaming, and spread over the whole output whatever order its parts are in."""
    return hashlib.sha1(clip_id.encode()).hexdigest()


def sample_rows(rows: list[dict], k: int) -> list[dict]:
    """The k rows with the smallest `sample_key`, in clip id order."""
    return sorted(heapq.nsmallest(k, rows, key=lambda r: sample_key(r["clip_id"])), key=lambda r: r["clip_id"])


def _clip_cards(rows: list[dict], cols: list[str], source_s3: S3Config) -> str:
    by_source: dict[str, list[dict]] = {}
    for r in rows:
        by_source.setdefault(r["source_uri"], []).append(r)
    thumbs: dict[str, list[np.ndarray]] = {}
    for uri, group in by_source.items():
        try:
            with local_copy(uri, source_s3) as path, WindowReader(path, group[0].get("stream_index"), group[0].get("pts_offset_s")) as reader:
                for r in group:
                    thumbs[r["clip_id"]] = clip_thumbnails(reader, r)
        except Exception:  # a source that moved or cannot be read only loses its pictures
            pass
    cards = []
    for r in rows:
        imgs = "".join(f'<img src="{_jpeg(f)}" alt="frame">' for f in thumbs.get(r["clip_id"], [])) or "<span class=muted>no frames</span>"
        scores = "".join(f"<tr><td>{_esc(c)}</td><td>{_esc(_fmt(r.get(c)))}</td></tr>" for c in cols if r.get(c) is not None)
        caption = f'<p class=caption>{_esc(r["caption"])}</p>' if r.get("caption") else ""
        reasons = "".join(f"<li>{_esc(x)}</li>" for x in r.get("filter_reasons") or [])
        reasons = f"<ul class=reasons>{reasons}</ul>" if reasons else ""
        name = os.path.basename(r["source_uri"])
        cards.append(
            f'<div class=card><div class=frames>{imgs}</div>'
            f'<div class=meta><b>{_esc(name)}</b> {r["start_s"]:.2f}–{r["end_s"]:.2f}s'
            f' <span class=muted>{_esc(r["clip_id"])}</span></div>{caption}{reasons}'
            f"<table class=scores>{scores}</table></div>"
        )
    return "".join(cards) or "<p class=muted>none</p>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d232a;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
.muted{color:#77808a;font-size:12px} table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #e1e4e8;padding:3px 8px;text-align:left} th{background:#f6f8fa}
.funnel .bar{height:22px;background:#3b7dd8;color:#fff;font-size:13px;line-height:22px;padding-left:6px;margin:3px 0;white-space:nowrap}
.funnel .kept{background:#2e9e5b} .hists{display:flex;flex-wrap:wrap;gap:18px} .hists figure{margin:0}
figcaption{font-size:13px;font-weight:600} .cards{display:flex;flex-wrap:wrap;gap:14px}
.card{border:1px solid #e1e4e8;border-radius:6px;padding:8px;width:360px;font-size:12px}
.frames{display:flex;gap:3px} .frames img{width:calc((100% - 6px) / 3);height:auto} .caption{font-style:italic;margin:4px 0}
.reasons{color:#b3261e;margin:4px 0;padding-left:16px} .scores td{padding:1px 5px;font-size:11px}
"""


@dataclass
class ManifestStats:
    """What an output's manifests hold, gathered by streaming them a part at a time (column-selected):
    counts, filter reasons, failures (the first `FAILURES_SHOWN` named), score histograms, and a
    sample of kept and of filtered clips."""

    videos: int = 0
    videos_ok: int = 0
    scenes: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source_uri, error)
    clips: int = 0
    kept: int = 0
    kept_s: float = 0.0  # the kept clips' length in seconds
    reasons: Counter = field(default_factory=Counter)
    clip_errors: int = 0
    failed_clips: list[tuple[str, list[str]]] = field(default_factory=list)  # (clip_id, errors)
    rules: list[str] = field(default_factory=list)  # drawn as thresholds
    columns: list[str] = field(default_factory=list)  # numeric columns, histogrammed
    histograms: dict[str, Histogram] = field(default_factory=dict)
    kept_sample: list[dict] = field(default_factory=list)
    filtered_sample: list[dict] = field(default_factory=list)


FAILURES_SHOWN = 200
ERRORS_LISTED = 100  # failed videos named in summary.json (all are error rows in the videos manifest)


def manifest_counts(stats: ManifestStats) -> dict:
    """summary.json's figures that come from the manifests: what a run writes at its end, and what
    `curate report` refreshes after the manifests changed (`curate dedup` filters duplicates)."""
    return {
        "videos_ok": stats.videos_ok,
        "videos_error": stats.videos - stats.videos_ok,
        "errors": dict(stats.failed[:ERRORS_LISTED]),
        "clips": stats.clips,
        "clips_kept": stats.kept,
        "clips_filtered": stats.clips - stats.kept,
        "clip_errors": stats.clip_errors,
        "filter_reasons": dict(stats.reasons),
    }


# What a clip card shows besides the scores.
_CARD_COLUMNS = ["clip_id", "source_uri", "start_s", "end_s", "pts_offset_s", "stream_index", "kept", "filter_reasons", "caption"]


def collect(store: Store, rules: list[str] | None = None, sample: int = 8, bins: int = 30) -> ManifestStats:
    """Stream the committed manifests of `store` into ManifestStats: one pass over the videos'
    small columns, two over the clips' (counts and bounds, then histogram bins and the sampled
    rows). Memory stays that of one part and the sample, however large the output. `rules` are
    the thresholds to draw (default: the rules the clips' filter reasons name)."""
    st = ManifestStats()
    parts = manifest.committed_parts(store)
    for t in manifest.scan(store, manifest.VIDEOS_DIR, ["source_uri", "status", "error", "scenes"], parts):
        ok = pc.equal(t.column("status"), "ok")
        st.videos += t.num_rows
        st.videos_ok += pc.sum(ok).as_py() or 0
        st.scenes += pc.sum(pc.list_value_length(t.filter(ok).column("scenes"))).as_py() or 0
        for r in t.filter(pc.invert(ok)).select(["source_uri", "error"]).to_pylist():
            if len(st.failed) < FAILURES_SHOWN:
                st.failed.append((r["source_uri"], r["error"]))

    bounds: dict[str, list[float]] = {}
    heaps: dict[bool, list] = {True: [], False: []}
    wanted = lambda schema: ["clip_id", "kept", "filter_reasons", "errors", *score_columns(schema)]  # noqa: E731
    for t in manifest.scan(store, manifest.CLIPS_DIR, wanted, parts):
        for c in score_columns(t.schema):
            bounds.setdefault(c, [math.inf, -math.inf])
        kept = t.column("kept").to_pylist()
        st.clips += t.num_rows
        st.kept += sum(bool(k) for k in kept)
        if "duration_s" in t.column_names:
            st.kept_s += pc.sum(pc.filter(t.column("duration_s"), pc.fill_null(t.column("kept"), False))).as_py() or 0.0
        for r in t.select(["clip_id", "filter_reasons", "errors"]).to_pylist():
            st.reasons.update(r["filter_reasons"] or [])
            if r["errors"]:
                st.clip_errors += 1
                if len(st.failed_clips) < FAILURES_SHOWN:
                    st.failed_clips.append((r["clip_id"], r["errors"]))
        for c, b in bounds.items():
            if c in t.column_names:
                mm = pc.min_max(pc.cast(t.column(c), pa.float64()))
                lo, hi = mm["min"].as_py(), mm["max"].as_py()
                if lo is not None and math.isfinite(lo) and math.isfinite(hi):
                    b[0], b[1] = min(b[0], lo), max(b[1], hi)
        for cid, k in zip(t.column("clip_id").to_pylist(), kept):
            entry = (-int(sample_key(cid)[:15], 16), cid)  # a max-heap of the smallest keys
            heap = heaps[bool(k)]
            if len(heap) < sample:
                heapq.heappush(heap, entry)
            elif entry > heap[0]:
                heapq.heapreplace(heap, entry)
    st.columns = [c for c, b in bounds.items() if b[0] <= b[1]]
    st.rules = list(rules or rules_from_reasons(st.reasons))
    for c, cuts in thresholds(st.rules).items():  # each histogram's range holds its thresholds
        if c in st.columns:
            bounds[c] = [min([bounds[c][0]] + [v for _, v in cuts]), max([bounds[c][1]] + [v for _, v in cuts])]
    return _histograms_and_samples(store, parts, st, bounds, heaps, bins)


def _histograms_and_samples(store: Store, parts: list[str], st: ManifestStats, bounds, heaps, bins: int) -> ManifestStats:
    """Second pass: histogram bins over the bounds found, and the sampled clips' rows."""
    st.histograms = {c: Histogram(*bounds[c], bins) for c in st.columns}
    ids = pa.array([cid for heap in heaps.values() for _, cid in heap], pa.string())
    rows = []
    for t in manifest.scan(store, manifest.CLIPS_DIR, ["kept", *st.columns, *_CARD_COLUMNS], parts):
        kept = t.column("kept").to_numpy(zero_copy_only=False).astype(bool)
        for c in st.columns:
            if c in t.column_names:
                st.histograms[c].add(pc.fill_null(pc.cast(t.column(c), pa.float64()), math.nan).to_numpy(zero_copy_only=False), kept)
        rows += t.filter(pc.is_in(t.column("clip_id"), ids)).to_pylist()
    rows.sort(key=lambda r: r["clip_id"])
    st.kept_sample = [r for r in rows if r["kept"]]
    st.filtered_sample = [r for r in rows if not r["kept"]]
    return st


def render(st: ManifestStats, summary: dict, store: Store, source_s3: S3Config) -> str:
    rules = st.rules
    cuts = thresholds(rules)
    funnel_steps = [("videos", st.videos, f"({st.videos_ok} decoded, {st.videos - st.videos_ok} failed)"),
                    ("scenes", st.scenes, "detected shots"), ("clips", st.clips, "after shaping"),
                    ("kept", st.kept, "after filtering")]
    top = max([n for _, n, _ in funnel_steps] + [1])
    funnel = "".join(
        f'<div class="bar{" kept" if name == "kept" else ""}" style="width:{max(4, 600 * n / top):.0f}px">'
        f"{_esc(name)}: {n} <span style='opacity:.8'>{_esc(note)}</span></div>"
        for name, n, note in funnel_steps
    )
    hists = "".join(
        f"<figure><figcaption>{_esc(c)}</figcaption>" + st.histograms[c].svg(cuts.get(c, [])) + "</figure>"
        for c in st.columns
    ) or "<p class=muted>no scores in this run</p>"
    reason_rows = "".join(
        f"<tr><td>{_esc(r)}</td><td>{n}</td><td>{100 * n / max(st.clips, 1):.1f}%</td></tr>" for r, n in st.reasons.most_common()
    ) or "<tr><td colspan=3 class=muted>no clip was filtered</td></tr>"
    rule_list = ", ".join(f"<code>{_esc(r)}</code>" for r in rules) or "none"
    failed = st.videos - st.videos_ok
    more = f"<p class=muted>the first {len(st.failed)} of {failed}</p>" if failed > len(st.failed) else ""
    error_rows = "".join(f"<tr><td>{_esc(uri)}</td><td>{_esc(err)}</td></tr>" for uri, err in st.failed)
    stage_rows = "".join(
        f"<tr><td>{_esc(name)}</td><td>{d.get('clips', 0)}</td><td>{d.get('frames', 0)}</td><td>{d.get('busy_s', 0):.1f}</td>"
        f"<td>{_fmt(d.get('clips_per_s'))}</td><td>{_fmt(d.get('frames_per_s'))}</td></tr>"
        for name, d in (summary.get("stages") or {}).items()
    )
    score_cols = [c for c in st.columns if c not in _BASE]
    wall = f" in {summary['wall_s']:.1f}s" if summary.get("wall_s") else ""
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>curate run report</title><style>{_CSS}</style></head><body>
<h1>curate run report</h1>
<div class=muted>{_esc(store.root)} · generated {time.strftime("%Y-%m-%d %H:%M:%S")}{_esc(wall)}</div>
<h2 id=funnel>Funnel</h2><div class=funnel>{funnel}</div>
<h2 id=scores>Scores</h2><p class=muted>kept clips green, filtered grey; red dashed lines: filter thresholds. Rules: {rule_list}</p>
<div class=hists>{hists}</div>
<h2 id=reasons>Filter reasons</h2><table><tr><th>reason</th><th>clips</th><th>share</th></tr>{reason_rows}</table>
{"<h2 id=errors>Failed videos</h2>" + more + "<table><tr><th>video</th><th>error</th></tr>" + error_rows + "</table>" if failed else ""}
{"<h2 id=stages>Stages</h2><table><tr><th>stage</th><th>clips</th><th>frames</th><th>busy s</th><th>clips/s</th><th>frames/s</th></tr>" + stage_rows + "</table>" if stage_rows else ""}
<h2 id=kept>Kept clips</h2><p class=muted>{len(st.kept_sample)} of {st.kept}: first, middle and last frame</p>
<div class=cards>{_clip_cards(st.kept_sample, score_cols, source_s3)}</div>
<h2 id=filtered>Filtered clips</h2><p class=muted>{len(st.filtered_sample)} of {st.clips - st.kept}</p>
<div class=cards>{_clip_cards(st.filtered_sample, score_cols, source_s3)}</div>
</body></html>
"""


def write_report(
    output_path: str,
    store: Store | None = None,
    rules: list[str] | None = None,
    sample: int = 8,
    stats: ManifestStats | None = None,
    summary: dict | None = None,
    source_s3: S3Config | None = None,
) -> str:
    """Write OUTPUT/report.html, and the dataset card OUTPUT/README.md (curate.card), for the run at
    `output_path`; returns the report's location.

    `rules` are the filter rules to draw as thresholds on the histograms (default: those summary.json
    records, else those the clips' filter reasons name). A run passes the stats (which hold its
    rules) and summary it already has; otherwise they are read from the output, and summary.json's
    counts are refreshed from the manifests (`manifest_counts`). Thumbnails read the source videos
    with `source_s3` (the pipeline's input.s3; default the output's settings)."""
    store = store or Store(output_path)
    data = None
    if summary is None:
        data = store.read_if_exists("summary.json")
        summary = json.loads(data) if data else {}
    stats = stats or collect(store, rules or summary.get("rules"), sample)
    if data:  # read from the output: the manifests may have changed since the run wrote it
        summary.update(manifest_counts(stats))
        store.write_bytes("summary.json", json.dumps(summary, indent=2, sort_keys=True).encode())
    page = render(stats, summary, store, source_s3 or store.cfg)
    store.write_bytes("report.html", page.encode("utf-8"))
    write_card(store, stats, summary)
    return store.uri("report.html")


def cmd_report(args) -> int:
    where = write_report(args.output, rules=args.rule or None, sample=args.sample)
    print(where if is_s3(where) else os.path.abspath(where))
    return 0


def register(subparsers):
    p = subparsers.add_parser("report", help="(re)build OUTPUT/report.html and the dataset card OUTPUT/README.md from a run's manifests")
    p.add_argument("output", help="the run's output directory (or s3:// prefix)")
    p.add_argument("--rule", action="append", default=[], help="a filter rule to draw as a threshold (repeatable)")
    p.add_argument("--sample", type=int, default=8, help="clips shown per group (default 8)")
    p.set_defaults(func=cmd_report)
    return p
