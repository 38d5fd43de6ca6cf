"""Where bytes live: local paths and S3-compatible stores (boto3), behind one small interface.

Manifests are committed with atomic writes (temp file + rename locally; a single PUT on S3), which
is what makes a killed run resumable without duplicates. Every S3 request, its body included, goes
through one retry policy (`with_retries`); botocore's own retries are off so that no request is
retried by two policies at once. Conditional writes (`read_versioned`, `swap`, `delete_if`) let one
writer own an output (see `manifest.Lease`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import random
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TypeVar

from curate.config import ConfigError, S3Config

log = logging.getLogger("curate")
T = TypeVar("T")

# Backoff before retry n (from 0): uniform in [0, min(cap, base * 2**n)] seconds ("full jitter",
# AWS Architecture Blog, "Exponential Backoff And Jitter", 2015).
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.25, 8.0
# Error codes S3 and compatible servers return for conditions that pass (besides any 5xx).
TRANSIENT_CODES = {"RequestTimeout", "SlowDown", "Throttling", "ThrottlingException", "InternalError",
                   "ServiceUnavailable", "OperationAborted"}


class SourceUnreadable(Exception):
    """A source that exists but is not a regular file (FIFO, device, directory): never retried."""


class S3Unavailable(Exception):
    """An S3 request still failing when the retry budget ran out (an outage, not a bad request)."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    return bucket, key


def is_transient(e: BaseException) -> bool:
    """Whether a failed S3 request may succeed if repeated: connection resets and timeouts, cut-off
    bodies, 5xx and throttling. boto3's transfer manager wraps errors, so the cause chain counts."""
    import botocore.exceptions as bx
    import s3transfer.exceptions as tx
    import urllib3.exceptions as ux

    while e is not None:
        if isinstance(e, bx.ClientError):
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return status >= 500 or status == 429 or e.response.get("Error", {}).get("Code") in TRANSIENT_CODES
        if isinstance(e, (bx.ConnectionError, bx.ResponseStreamingError, bx.IncompleteReadError,
                          tx.RetriesExceededError, ux.ProtocolError, ux.TimeoutError, ConnectionError, TimeoutError)):
            return True
        e = e.__cause__ or e.__context__
    return False


def with_retries(op: Callable[[], T], cfg: S3Config, what: str) -> T:
    """Run `op` (one S3 request including reading its body) until it succeeds, a non-transient
    error occurs (raised as is), or `cfg.retry_budget_s` seconds have passed (S3Unavailable)."""
    start = time.monotonic()
    attempt = 0
    while True:
        try:
            return op()
        except Exception as e:
            if not is_transient(e):
                raise
            delay = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))
            attempt += 1
            spent = time.monotonic() - start
            if spent + delay > cfg.retry_budget_s:
                raise S3Unavailable(f"{what}: still failing after {attempt} attempts in {spent:.0f}s: {type(e).__name__}: {e}") from e
            log.info("S3 %s failed (%s: %s); retry %d in %.2fs", what, type(e).__name__, e, attempt, delay)
            time.sleep(delay)


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
        config=Config(
            retries={"total_max_attempts": 1},  # with_retries is the one policy
            connect_timeout=cfg.timeout_s,
            read_timeout=cfg.timeout_s,
            s3={"addressing_style": "path"},
        ),
        **keys,
    )


def iter_s3(uri: str, cfg: S3Config) -> Iterator[str]:
    """Every object under an s3:// prefix, in key order, a listing page (1000 keys) at a time."""
    bucket, prefix = split_s3(uri)
    return (f"s3://{bucket}/{key}" for key in _iter_keys(cfg, bucket, prefix))


def _iter_keys(cfg: S3Config, bucket: str, prefix: str) -> Iterator[str]:
    """Keys under `prefix`, page by page, each page request under the retry policy."""
    token = None
    while True:
        extra = {"ContinuationToken": token} if token else {}
        page = with_retries(
            lambda: s3_client(cfg).list_objects_v2(Bucket=bucket, Prefix=prefix, **extra), cfg, f"list s3://{bucket}/{prefix}"
        )
        yield from (o["Key"] for o in page.get("Contents", []))
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return


def _list_keys(cfg: S3Config, bucket: str, prefix: str) -> list[str]:
    return list(_iter_keys(cfg, bucket, prefix))


def read_s3(uri: str, cfg: S3Config, byte_range: tuple[int, int] | None = None) -> bytes:
    """An S3 object's bytes (`byte_range`: first and last byte, inclusive), body read retried too."""
    bucket, key = split_s3(uri)
    extra = {"Range": f"bytes={byte_range[0]}-{byte_range[1]}"} if byte_range else {}
    return with_retries(lambda: s3_client(cfg).get_object(Bucket=bucket, Key=key, **extra)["Body"].read(), cfg, f"read {uri}")


@contextlib.contextmanager
def local_copy(uri: str, cfg: S3Config) -> Iterator[str]:
    """A local path for `uri`: the file itself, or a temporary download of an S3 object.

    Decoders seek freely (an mp4's index may sit at its end), so remote objects are fetched whole
    (boto3's multipart download, restarted under the retry policy) and deleted as soon as the
    video is done. A local path must be a readable regular file: OSError if it cannot be read (it
    may be readable next time), SourceUnreadable for a FIFO or device, which a decoder would block
    on or read forever.
    """
    if not is_s3(uri):
        fd = os.open(uri, os.O_RDONLY | os.O_NONBLOCK)
        try:
            mode = os.fstat(fd).st_mode
        finally:
            os.close(fd)
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file"
            raise SourceUnreadable(f"not a regular file ({kind})")
        yield uri
        return
    from boto3.s3.transfer import TransferConfig

    bucket, key = split_s3(uri)
    tmpdir = tempfile.mkdtemp(prefix="curate-src-")
    path = os.path.join(tmpdir, os.path.basename(key) or "object")
    once = TransferConfig(num_download_attempts=1)
    try:
        with_retries(lambda: s3_client(cfg).download_file(bucket, key, path, Config=once), cfg, f"download {uri}")
        yield path
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


@dataclass(frozen=True)
class Versioned:
    """An object's bytes, the version a conditional write must name, and its age on the store's
    own clock (seconds since it was last written)."""

    data: bytes
    version: str
    age_s: float


class Store:
    """An output root (local directory or s3://bucket/prefix) with atomic object writes."""

    def __init__(self, root: str, cfg: S3Config | None = None):
        self.root = root.rstrip("/") or "/"
        self.cfg = cfg or S3Config()
        self.s3 = is_s3(self.root)

    @property
    def client(self):
        return s3_client(self.cfg)

    def uri(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _s3(self, op: Callable[[], T], what: str, rel: str) -> T:
        return with_retries(op, self.cfg, f"{what} {self.uri(rel)}")

    def prepare(self) -> None:
        """Check before any work that the output can be a directory: ConfigError naming output.path
        if it is a file or cannot be created (a read-only place is found by the lease's first write)."""
        if self.s3:
            return
        root = Path(self.root)
        if root.exists() and not root.is_dir():
            raise ConfigError(f"output.path: '{self.root}' is a file, not a directory")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"output.path: cannot create '{self.root}' ({e.strerror})") from None

    @contextlib.contextmanager
    def _local_temp(self, rel: str) -> Iterator[Path]:
        """A temp path beside `rel` that becomes `rel` atomically when the block succeeds; removed
        whatever happens otherwise (a full disk leaves no partial file behind)."""
        dest = Path(self.uri(rel))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
        try:
            yield tmp
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def write_bytes(self, rel: str, data: bytes, durable: bool = True) -> None:
        """Write `rel` atomically (readers see the old file or the new one). `durable=False` skips
        the local fsync: for scratch, which a crash discards anyway (dedup writes tens of thousands
        of small files at millions of clips, and a sync each kept it waiting on the disk)."""
        if self.s3:
            bucket, key = split_s3(self.uri(rel))
            self._s3(lambda: self.client.put_object(Bucket=bucket, Key=key, Body=data), "write", rel)
            return
        with self._local_temp(rel) as tmp, open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())

    def upload_file(self, rel: str, local_path: str) -> None:
        if self.s3:
            bucket, key = split_s3(self.uri(rel))
            self._s3(lambda: self.client.upload_file(local_path, bucket, key), "upload", rel)
            return
        with self._local_temp(rel) as tmp:
            shutil.copyfile(local_path, tmp)

    def read_bytes(self, rel: str) -> bytes:
        if self.s3:
            return read_s3(self.uri(rel), self.cfg)
        return Path(self.uri(rel)).read_bytes()

    def read_tail(self, rel: str, size: int) -> bytes:
        """The last `size` bytes at `rel` (all of it when it is smaller): a file's footer without its
        body (one ranged GET on S3)."""
        if self.s3:
            bucket, key = split_s3(self.uri(rel))
            return self._s3(lambda: self.client.get_object(Bucket=bucket, Key=key, Range=f"bytes=-{size}")["Body"].read(), "read", rel)
        with open(self.uri(rel), "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - size))
            return f.read()

    def list(self, rel_dir: str) -> list[str]:
        """Names (not paths) of the committed files directly under `rel_dir`."""
        if self.s3:
            bucket, prefix = split_s3(self.uri(rel_dir).rstrip("/") + "/")
            names = [k[len(prefix) :] for k in _list_keys(self.cfg, bucket, prefix)]
            return sorted(n for n in names if n and "/" not in n)
        d = Path(self.uri(rel_dir))
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if p.is_file() and not p.name.startswith("."))

    def delete(self, rel: str) -> None:
        if self.s3:
            bucket, key = split_s3(self.uri(rel))
            self._s3(lambda: self.client.delete_object(Bucket=bucket, Key=key), "delete", rel)
            return
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.uri(rel))

    def delete_tree(self, rel_dir: str) -> None:
        """Delete everything under `rel_dir`, at any depth (nothing if it does not exist)."""
        if self.s3:
            bucket, prefix = split_s3(self.uri(rel_dir).rstrip("/") + "/")
            keys = _list_keys(self.cfg, bucket, prefix)
            for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
                batch = {"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True}
                self._s3(lambda b=batch: self.client.delete_objects(Bucket=bucket, Delete=b), "delete", rel_dir)
            return
        shutil.rmtree(self.uri(rel_dir), ignore_errors=True)

    def clean_temp(self, rel_dir: str) -> None:
        """Remove half-written temp files a killed run left under `rel_dir`, at any depth (local
        only; S3 PUTs are atomic)."""
        if self.s3:
            return
        d = Path(self.uri(rel_dir))
        if d.is_dir():
            for p in d.rglob(".*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    # ---- conditional writes: compare-and-swap on one object, for the writer lease

    @contextlib.contextmanager
    def _locked(self, rel: str) -> Iterator[Path]:
        """Local compare-and-swap: an exclusive flock on a sidecar file for the read-compare-write."""
        path = Path(self.uri(rel))
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / f".{path.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield path

    @staticmethod
    def _local_version(path: Path) -> tuple[str, float] | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        # Every write is a rename of a new file: a new inode and mtime.
        return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}", time.time() - st.st_mtime

    def read_if_exists(self, rel: str) -> bytes | None:
        """The bytes at `rel`, or None when there is no such object (S3: no listing needed)."""
        if self.s3:
            got = self._get_if_exists(rel)
            return got["Body"] if got else None
        try:
            return Path(self.uri(rel)).read_bytes()
        except FileNotFoundError:
            return None

    def _get_if_exists(self, rel: str) -> dict | None:
        import botocore.exceptions as bx

        bucket, key = split_s3(self.uri(rel))

        def op():
            try:
                r = self.client.get_object(Bucket=bucket, Key=key)
            except bx.ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            return {**r, "Body": r["Body"].read()}

        return self._s3(op, "read", rel)

    def read_versioned(self, rel: str) -> Versioned | None:
        """The object at `rel` with its version and age, or None when there is none."""
        if self.s3:
            r = self._get_if_exists(rel)
            return Versioned(r["Body"], r["ETag"], _age(r["ResponseMetadata"]["HTTPHeaders"], r["LastModified"])) if r else None
        with self._locked(rel) as path:
            seen = self._local_version(path)
            if seen is None:
                return None
            return Versioned(path.read_bytes(), *seen)

    def swap(self, rel: str, data: bytes, version: str | None) -> bool:
        """Write `data` at `rel` only if the object is still at `version` (None: only if there is
        no object). False when another writer got there first."""
        if self.s3:
            import botocore.exceptions as bx

            bucket, key = split_s3(self.uri(rel))
            cond = {"IfMatch": version} if version else {"IfNoneMatch": "*"}
            try:
                self._s3(lambda: self.client.put_object(Bucket=bucket, Key=key, Body=data, **cond), "write", rel)
            except bx.ClientError as e:
                if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
                    return False
                raise
            return True
        with self._locked(rel) as path:
            seen = self._local_version(path)
            if (seen[0] if seen else None) != version:
                return False
            self.write_bytes(rel, data)
            return True

    def delete_if(self, rel: str, version: str) -> bool:
        """Delete `rel` only if it is still at `version`."""
        if self.s3:
            import botocore.exceptions as bx

            bucket, key = split_s3(self.uri(rel))
            try:
                self._s3(lambda: self.client.delete_object(Bucket=bucket, Key=key, IfMatch=version), "delete", rel)
            except bx.ClientError as e:
                if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (404, 409, 412):
                    return False
                raise
            return True
        with self._locked(rel) as path:
            seen = self._local_version(path)
            if seen is None or seen[0] != version:
                return False
            path.unlink()
            return True


def _age(headers: dict, last_modified: datetime) -> float:
    """Seconds since `last_modified` on the server's clock (its Date header), else on ours."""
    try:
        now = parsedate_to_datetime(headers["date"])
    except (KeyError, TypeError, ValueError):
        now = datetime.now(timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    return (now - last_modified).total_seconds()
