"""Run inside fresh network, PID and mount namespaces by tests/test_cluster.py: a three-node Ray
cluster on loopback, a SeaweedFS S3 server, an undisturbed run and a run that loses a node midway.

Every node is a machine of its own: the head runs in the namespaces this script starts in, each
worker node in nested PID and mount namespaces (its own /proc), all three on one loopback network.
`ray stop` run inside a worker's namespaces (`nsenter`) therefore finds and stops that node's Ray
processes only, as it does on a machine of a real cluster.

Usage: python node_loss.py SPEC.json (see test_cluster.py); writes its logs, the two outputs'
manifests and `result.json` to SPEC["results"]. `python node_loss.py ray-stop-when-told` is the
armed `ray stop` (Cluster.arm_ray_stop).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
from ray.util.state import list_nodes, list_tasks
from s3_server import start_seaweedfs

GCS_PORT, DASHBOARD_PORT = 6379, 8265
DASHBOARD = f"http://127.0.0.1:{DASHBOARD_PORT}"
BUCKET = "curate-test"
# Each worker node carries a resource of its name: the state API lists node ids and resources.
WORKERS = ("w1", "w2")
# 300 MB object stores: Ray Data reserves a quarter of the cluster's for its four operators, half of
# each share for running tasks; at 100 MB a node that half (about 9 MB) is below one block, and
# operators wait for the unreserved rest: runs took 2.3x as long (42-53 s against 18-22 s).
NODE_ARGS = ["--node-ip-address=127.0.0.1", "--object-store-memory=300000000", "--disable-usage-stats"]


class Cluster:
    """The head here, worker nodes in PID and mount namespaces of their own; logs in `results`."""

    def __init__(self, ray: str, ray_tmp: str, results: Path):
        self.ray, self.ray_tmp, self.results = ray, ray_tmp, results
        self.workers: dict[str, subprocess.Popen] = {}
        self.node_ids: dict[str, str] = {}

    def start(self, worker_cpus: int) -> None:
        with open(self.results / "head.log", "wb") as log:
            subprocess.run(
                [self.ray, "start", "--head", f"--port={GCS_PORT}", "--num-cpus=0", f"--temp-dir={self.ray_tmp}/head",
                 "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={DASHBOARD_PORT}", *NODE_ARGS],
                stdout=log, stderr=subprocess.STDOUT, timeout=120, check=True,
            )
        for name in WORKERS:
            with open(self.results / f"{name}.log", "wb") as log:
                # `--block` keeps `ray start` running as the namespace's first process: were it to
                # exit, the kernel would end every process of the namespace, the node's too.
                self.workers[name] = subprocess.Popen(
                    ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                     self.ray, "start", "--block", f"--address=127.0.0.1:{GCS_PORT}", f"--num-cpus={worker_cpus}",
                     f"--resources={json.dumps({name: 1})}", f"--temp-dir={self.ray_tmp}/{name}", *NODE_ARGS],
                    stdout=log, stderr=subprocess.STDOUT,
                )
        deadline = time.monotonic() + 120
        while len(self.node_ids) < 1 + len(WORKERS):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.node_ids)} of {1 + len(WORKERS)} nodes up after 120 s")
            time.sleep(0.5)
            try:
                alive = [n for n in list_nodes(address=DASHBOARD, raise_on_missing_output=False) if n.state == "ALIVE"]
            except Exception:  # the dashboard is not up yet
                continue
            self.node_ids = {next((w for w in WORKERS if w in n.resources_total), "head"): n.node_id for n in alive}

    def name_of(self, node_id: str | None) -> str | None:
        return next((n for n, i in self.node_ids.items() if i == node_id), node_id)

    def first_pid(self, name: str) -> int:
        """The first process of worker `name`'s namespaces (its `ray start --block`)."""
        pid = self.workers[name].pid  # `unshare`, which forked it
        return int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])

    def titles(self, name: str) -> dict[int, str]:
        """Worker `name`'s processes and their titles: a Ray worker's is `ray::` and the task or
        actor it runs, set as it starts one (the state API learns of tasks a second or so later)."""
        titles = {}
        for p in psutil.Process(self.first_pid(name)).children(recursive=True):
            try:
                titles[p.pid] = " ".join(p.cmdline()).strip()
            except psutil.Error:  # ended meanwhile
                pass
        return titles

    def arm_ray_stop(self, name: str) -> subprocess.Popen:
        """`ray stop` in worker `name`'s PID and mount namespaces, where it finds that node's
        processes only; loaded ahead (Python and Ray take seconds to import on a busy machine) and
        run when a line is written to its stdin (closing stdin disarms it)."""
        with open(self.results / f"ray_stop_{name}.log", "wb") as log:
            return subprocess.Popen(["nsenter", f"--target={self.first_pid(name)}", "--pid", "--mount",
                                     sys.executable, os.path.abspath(__file__), "ray-stop-when-told"],
                                    stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)


def ray_stop_when_told() -> None:
    from ray.scripts.scripts import main

    if sys.stdin.readline():
        sys.argv = ["ray", "stop"]
        main()


def stop_midway(cluster: Cluster, driver: subprocess.Popen, committed) -> dict:
    """Once the run has committed a manifest part (`committed()` counts them), `ray stop` the worker
    node that holds the model stage's actor as soon as it starts decoding a video: the run loses
    the actor, the decode and the blocks in that node's object store. Returns the node stopped,
    what its Ray workers were running and the parts committed by then."""
    armed = {name: cluster.arm_ray_stop(name) for name in WORKERS}
    decoding: dict[str, set[int]] = {name: set() for name in WORKERS}
    try:
        while driver.poll() is None:
            parts = committed()
            for name in WORKERS:
                titles = cluster.titles(name)
                now = {pid for pid, t in titles.items() if t.startswith("ray::MapBatches(split_batch)")}
                started, decoding[name] = now - decoding[name], now
                if parts and started and any(t.startswith("ray::MapWorker") for t in titles.values()):
                    armed[name].communicate(b"stop\n", timeout=60)
                    if armed[name].returncode:
                        raise RuntimeError(f"ray stop on {name} failed: see ray_stop_{name}.log")
                    return {"stopped": name, "parts_when_stopped": parts,
                            "running_when_stopped": sorted(t for t in titles.values() if t.startswith("ray::"))}
            time.sleep(0.1)
        return {"stopped": None}
    finally:
        for p in armed.values():
            if p.returncode is None:
                p.communicate(b"", timeout=60)


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    results = Path(spec["results"])
    result: dict = {}

    def save() -> None:
        (results / "result.json").write_text(json.dumps(result, indent=1))

    cluster = Cluster(spec["ray"], spec["ray_tmp"], results)
    cluster.start(spec["worker_cpus"])
    result["nodes"] = cluster.node_ids
    save()

    s3 = start_seaweedfs(Path(spec["s3_root"]), os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    try:
        client = s3.client()
        client.create_bucket(Bucket=BUCKET)
        for path in spec["footage"]:
            client.upload_file(path, BUCKET, f"raw/{os.path.basename(path)}")

        def run(out: str) -> subprocess.Popen:
            with open(results / f"{out}.log", "wb") as log:
                return subprocess.Popen(
                    [spec["curate"], "run", spec["pipeline"], f"--address=127.0.0.1:{GCS_PORT}",
                     f"--set=input.paths=['s3://{BUCKET}/raw/']", f"--set=output.path=s3://{BUCKET}/{out}",
                     f"--set=input.s3.endpoint_url={s3.endpoint_url}", f"--set=output.s3.endpoint_url={s3.endpoint_url}"],
                    stdout=log, stderr=subprocess.STDOUT,
                )

        t0 = time.monotonic()
        result["undisturbed_rc"] = run("undisturbed").wait(spec["run_timeout"])
        result["undisturbed_s"] = time.monotonic() - t0
        save()
        if result["undisturbed_rc"]:
            return

        t0 = time.monotonic()
        driver = run("disturbed")
        result.update(stop_midway(cluster, driver, lambda: len(listing(client, "disturbed/videos/"))))
        result["stopped_at_s"] = time.monotonic() - t0
        result["disturbed_rc"] = driver.wait(spec["run_timeout"])
        result["disturbed_s"] = time.monotonic() - t0
        save()

        time.sleep(2)  # task events reach the dashboard a little after the tasks end
        result["task_attempts"] = [
            {"task_id": t.task_id, "name": t.name, "attempt": t.attempt_number, "state": t.state,
             "node": cluster.name_of(t.node_id), "error_type": t.error_type}
            for t in list_tasks(address=DASHBOARD, filters=[("type", "=", "NORMAL_TASK")], limit=10000, detail=True,
                                raise_on_missing_output=False)
        ]
        result["alive_after"] = sorted(cluster.name_of(n.node_id) for n in list_nodes(address=DASHBOARD) if n.state == "ALIVE")
        for out in ("undisturbed", "disturbed"):
            result[f"{out}_keys"] = [k[len(out) + 1:] for k in listing(client, f"{out}/")]
            for k in parts(client, out):
                (results / k).parent.mkdir(parents=True, exist_ok=True)
                client.download_file(BUCKET, k, str(results / k))
        save()
    finally:
        s3.stop()


def listing(client, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def parts(client, out: str) -> list[str]:
    """The committed manifest parts of output `out` (a videos part is written after its clips twin)."""
    videos = listing(client, f"{out}/videos/")
    return [k.replace("/videos/", "/clips/", 1) for k in videos] + videos


if __name__ == "__main__":
    ray_stop_when_told() if sys.argv[1] == "ray-stop-when-told" else main(sys.argv[1])
