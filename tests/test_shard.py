"""WebDataset shards of a curated manifest over real footage: layout, round trip, CLI, training input."""

from __future__ import annotations

import io
import json
import os

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from train_data import make_manifest

from curate.shard import ShardConfig, bucket_of, read_index, read_manifest, read_member, shard_urls, write_shards
from curate.cli import main
from curate.train.config import TrainConfig
from curate.train.data import ClipDataset, load_clips
from curate.train.loop import train


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    return make_manifest(tmp_path_factory.mktemp("curated"), bunny=True)


@pytest.fixture(scope="module")
def shards(output, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    summary = write_shards(str(output), {"out": str(out), "target_size": "200KB"})
    assert summary["clips"] == 6 and summary["buckets"] == 3
    return out


def read_rows(output) -> list[dict]:
    return pq.read_table(output / "clips").to_pylist()


def decode(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_bucket_names():
    cfg = ShardConfig()
    row = {"width": 1280, "height": 720, "num_frames": 100}
    assert bucket_of(row, cfg) == "resolution_720/aspect_ratio_16_9/frames_0_255"
    assert bucket_of({**row, "width": 720, "height": 1280}, cfg) == "resolution_720/aspect_ratio_9_16/frames_0_255"
    assert bucket_of({"width": 640, "height": 272, "num_frames": 300}, cfg) == (
        "resolution_240/aspect_ratio_21_9/frames_256_511"
    )
    assert bucket_of({"width": 100, "height": 80, "num_frames": 0}, cfg).startswith("resolution_144/aspect_ratio_4_3/")


def test_every_manifest_row_reads_back_from_the_shards(output, shards):
    kept = {r["clip_id"]: r for r in read_rows(output) if r["kept"]}
    seen = {}
    for sample in wds.WebDataset(shard_urls(str(shards)), shardshuffle=False):
        row = json.loads(sample["json"])
        assert row == kept[sample["__key__"]]  # the manifest row itself
        assert sample["txt"].decode() == (row["caption"] or "")
        frames = decode(sample["mp4"])
        assert len(frames) == row["num_frames"]
        assert frames[0].shape == (row["height"] // 2 * 2, row["width"] // 2 * 2, 3)
        seen[sample["__key__"]] = sample
    assert set(seen) == set(kept)  # the not-kept clip is left out, nothing is lost or doubled

    # The index's byte ranges point at the same members a tar reader finds.
    index = read_index(str(shards)).to_pylist()
    assert {r["clip_id"] for r in index} == set(kept)
    for r in index:
        for ext in ("mp4", "json", "txt"):
            assert read_member(str(shards), r, ext) == seen[r["key"]][ext]
        assert r["shard"].startswith(r["bucket"] + "/shard-")


def test_reference_window_is_cut_at_the_right_frames(output, shards):
    row = next(r for r in read_index(str(shards)).to_pylist() if r["start_frame"] == 32)
    cut = decode(read_member(str(shards), row, "mp4"))
    with av.open(row["source_uri"]) as c:
        full = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    for k in (0, 20, len(cut) - 1):
        assert np.abs(cut[k].astype(int) - full[32 + k]).mean() < 3  # re-encoded at crf 18
    assert np.abs(cut[0].astype(int) - full[33]).mean() > np.abs(cut[0].astype(int) - full[32]).mean()


def test_only_committed_manifest_parts_are_sharded(output, tmp_path):
    """A clips part whose videos part is missing (a commit cut short) is not read."""
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(output / "clips", partial / "clips")
    shutil.copytree(output / "videos", partial / "videos")
    shutil.copy(output / "clips" / "part-00000.parquet", partial / "clips" / "part-00001.parquet")
    assert len(read_manifest(str(partial))) == len(read_rows(output))
    (partial / "videos" / "part-00000.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="no committed clips manifest parts"):
        read_manifest(str(partial))


def test_shards_close_at_the_target_size(shards):
    index = read_index(str(shards)).to_pylist()
    per_shard: dict[str, int] = {}
    for r in index:
        per_shard[r["shard"]] = per_shard.get(r["shard"], 0) + 1
    assert len(per_shard) > 3  # the 21:9 bucket needed more than one 200 KB shard
    for shard, count in per_shard.items():
        size = os.path.getsize(shards / shard)
        assert size <= 200_000 + 10_240 or count == 1  # tar end padding aside


def test_rules_rerun_and_cli(output, tmp_path, capsys):
    out = tmp_path / "shards"
    first = write_shards(str(output), {"out": str(out), "target_size": "200KB"})
    old = set(read_index(str(out)).column("shard").to_pylist())
    assert first["clips"] == 6
    rules = "rules=[aesthetic_score >= 5]"
    assert main(["shard", str(output), "--out", str(out), "--target-size", "10MB", "--set", rules]) == 0
    assert "4 clips in" in capsys.readouterr().out
    index = read_index(str(out)).to_pylist()
    assert all(r["aesthetic_score"] >= 5 for r in index) and len(index) == 4
    new = {r["shard"] for r in index}
    assert old - new
    for shard in old - new:  # shards of the previous run are gone
        assert not (out / shard).exists()
    assert all((out / s).exists() for s in new)

    assert main(["shard", str(output), "--set", "colour=1"]) == 2
    assert capsys.readouterr().err.strip() == "curate: error: shard.colour: unknown key"


def test_trains_from_shards_like_from_the_manifest(output, shards, tmp_path):
    buckets = [[4, 16, 32], [4, 16, 16]]
    from_manifest = TrainConfig.model_validate(
        {"run_dir": str(tmp_path / "run"), "max_steps": 1, "data": {"manifest": str(output), "buckets": buckets}}
    )
    from_shards = from_manifest.model_copy(
        update={"data": from_manifest.data.model_copy(update={"manifest": None, "shards": str(shards)})}
    )
    a = ClipDataset(load_clips(from_manifest.data), from_manifest.data)
    b = ClipDataset(load_clips(from_shards.data), from_shards.data)
    assert [r["clip_id"] for r in a.rows] == [r["clip_id"] for r in b.rows]
    for i in range(len(a)):
        x, y = a[(None, i)]["video"], b[(None, i)]["video"]
        assert x.shape == y.shape
        assert (x - y).abs().mean() < 0.05, a.rows[i]["clip_id"]  # same frames, one extra encode
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared CPU: one BLAS thread beats two contending
    try:
        assert train(from_shards)["step"] == 1
    finally:
        torch.set_num_threads(threads)
