"""Where bytes live: local paths and S3-compatible stores (boto3), behind one small interface.

Manifests are committed with atomic writes (temp file + rename locally; a single PUT on S3), which
is what makes a killed run resumable without duplicates.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from curate.config import S3Config


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    return bucket, key


def s3_client(cfg: S3Config):
    """A boto3 S3 client for `cfg`, made once per settings and credentials in each process: building
    one costs milliseconds, and range reads during training ask for one per item."""
    return _client(cfg.model_dump_json(), os.environ.get(cfg.access_key_env), os.environ.get(cfg.secret_key_env))


@functools.lru_cache(maxsize=16)
def _client(cfg_json: str, access_key: str | None, secret_key: str | None):
    import boto3
    from botocore.config import Config

    cfg = S3Config.model_validate_json(cfg_json)
    session = boto3.session.Session(profile_name=cfg.profile) if cfg.profile else boto3.session.Session()
    keys = {"aws_access_key_id": access_key, "aws_secret_access_key": secret_key} if access_key and secret_key else {}
    return session.client(
        "s3",
        endpoint_url=cfg.endpoint_url,
        region_name=cfg.region or "us-east-1",
        config=Config(retries={"max_attempts": 5, "mode": "adaptive"}, s3={"addressing_style": "path"}),
        **keys,
    )


def list_s3(uri: str, cfg: S3Config) -> list[str]:
    bucket, prefix = split_s3(uri)
    client = s3_client(cfg)
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [f"s3://{bucket}/{o['Key']}" for o in page.get("Contents", [])]
    return out


@contextlib.contextmanager
def local_copy(uri: str, cfg: S3Config) -> Iterator[str]:
    """A local path for `uri`: the file itself, or a temporary download of an S3 object.

    Decoders seek freely (an mp4's index may sit at its end), so remote objects are fetched whole
    (boto3's multipart download) and deleted as soon as the video is done.
    """
    if not is_s3(uri):
        yield uri
        return
    bucket, key = split_s3(uri)
    tmpdir = tempfile.mkdtemp(prefix="curate-src-")
    path = os.path.join(tmpdir, os.path.basename(key) or "object")
    try:
        s3_client(cfg).download_file(bucket, key, path)
        yield path
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


class Store:
    """An output root (local directory or s3://bucket/prefix) with atomic object writes."""

    def __init__(self, root: str, cfg: S3Config | None = None):
        self.root = root.rstrip("/")
        self.cfg = cfg or S3Config()
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = s3_client(self.cfg)
        return self._client

    def uri(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def write_bytes(self, rel: str, data: bytes) -> None:
        if is_s3(self.root):
            bucket, key = split_s3(self.uri(rel))
            self.client.put_object(Bucket=bucket, Key=key, Body=data)
            return
        dest = Path(self.uri(rel))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)

    def upload_file(self, rel: str, local_path: str) -> None:
        if is_s3(self.root):
            bucket, key = split_s3(self.uri(rel))
            self.client.upload_file(local_path, bucket, key)
            return
        dest = Path(self.uri(rel))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, dest)

    def read_bytes(self, rel: str) -> bytes:
        if is_s3(self.root):
            bucket, key = split_s3(self.uri(rel))
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return Path(self.uri(rel)).read_bytes()

    def list(self, rel_dir: str) -> list[str]:
        """Names (not paths) of the committed files directly under `rel_dir`."""
        if is_s3(self.root):
            bucket, prefix = split_s3(self.uri(rel_dir).rstrip("/") + "/")
            names = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                names += [o["Key"][len(prefix) :] for o in page.get("Contents", [])]
            return sorted(n for n in names if n and "/" not in n)
        d = Path(self.uri(rel_dir))
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if p.is_file() and not p.name.startswith("."))

    def delete(self, rel: str) -> None:
        if is_s3(self.root):
            bucket, key = split_s3(self.uri(rel))
            self.client.delete_object(Bucket=bucket, Key=key)
            return
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.uri(rel))

    def delete_tree(self, rel_dir: str) -> None:
        """Delete everything under `rel_dir`, at any depth (scratch data)."""
        if is_s3(self.root):
            bucket, prefix = split_s3(self.uri(rel_dir).rstrip("/") + "/")
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            return
        shutil.rmtree(self.uri(rel_dir), ignore_errors=True)

    def clean_temp(self, rel_dir: str) -> None:
        """Remove half-written temp files a killed run left behind (local only; S3 PUTs are atomic)."""
        if is_s3(self.root):
            return
        d = Path(self.uri(rel_dir))
        if d.is_dir():
            for p in d.glob(".*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
