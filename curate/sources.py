"""Turns `input.paths` into the video URIs a run processes, listed lazily.

An entry that exists as given is that file or directory whatever characters its name holds
(`clip [1].mp4`, `what?.mp4`); only an entry that does not exist is tried as a glob. Local sources
are deduplicated by their real path, so a file reached through symlinks (or a recursive glob
through a symlink loop) is processed once, under the first of its names. Listing streams: an S3
prefix a page at a time, a list file a line (or row group) at a time, a directory a directory at
a time, so millions of sources never sit in one list before the first video starts.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from collections.abc import Iterator

from curate.config import ConfigError, InputConfig, read_lines
from curate.storage import is_s3, iter_s3

LIST_SUFFIXES = (".txt", ".lst", ".parquet")


def package_path(uri: str) -> str:
    """`pkg://package/rel/path` -> the path inside an installed package (without importing it)."""
    rest = uri[len("pkg://") :]
    pkg, _, rel = rest.partition("/")
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"input.paths: package '{pkg}' is not installed (from {uri})")
    return os.path.join(list(spec.submodule_search_locations)[0], rel)


def _is_video(name: str, extensions: list[str]) -> bool:
    return name.lower().endswith(tuple(e.lower() for e in extensions))


def _read_list(path: str, cfg: InputConfig) -> Iterator[str]:
    """A list file's entries, read as they are needed (a Parquet list a row group at a time)."""
    if path.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            f = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as e:
            raise ConfigError(f"{path}: not a readable Parquet list ({e})") from None
        schema = f.schema_arrow
        if cfg.uri_column not in schema.names:
            raise ConfigError(f"input.uri_column: '{cfg.uri_column}' is not a column of {path}")
        kind = schema.field(cfg.uri_column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise ConfigError(f"input.uri_column: column '{cfg.uri_column}' of {path} holds {kind}, not strings")
        for batch in f.iter_batches(columns=[cfg.uri_column]):
            yield from (u for u in batch.column(0).to_pylist() if u)
        return
    base = os.path.dirname(os.path.abspath(path))
    for line in read_lines(path):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        # Relative entries are relative to the list file, like a playlist.
        yield line if is_s3(line) or os.path.isabs(line) else os.path.join(base, line)


def _walk(path: str, extensions: list[str]) -> Iterator[str]:
    """Video files under a directory in sorted path order, one directory's listing held at a time
    (symlinked directories are not followed, as os.walk does not)."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return
    # Sorted as whole paths would sort: a directory's name sorts with the "/" that follows it.
    for e in sorted(entries, key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name):
        if e.is_dir(follow_symlinks=False):
            yield from _walk(e.path, extensions)
        elif _is_video(e.name, extensions):
            yield e.path


def _entry(i: int, entry: str, cfg: InputConfig) -> Iterator[str]:
    """The sources one `input.paths` entry names, lazily; ConfigError for an entry that names none."""
    key = f"input.paths[{i}]"
    if is_s3(entry):
        found = (u for u in iter_s3(entry, cfg.s3) if _is_video(u, cfg.extensions))
    else:
        path = package_path(entry) if entry.startswith("pkg://") else os.path.expanduser(entry)
        if os.path.isdir(path):
            found = _walk(path, cfg.extensions)
        elif os.path.isfile(path) and path.lower().endswith(LIST_SUFFIXES):
            found = _read_list(path, cfg)
        elif os.path.lexists(path):
            # Any other existing entry is a source, even a FIFO or a device: reading it
            # decides (an error row), not the listing.
            found = iter([path])
        elif glob.has_magic(path):
            found = iter(sorted(p for p in glob.iglob(path, recursive=True) if os.path.isfile(p)))
        else:
            raise ConfigError(f"{key}: '{entry}' does not exist")
        found = (os.path.abspath(u) if not is_s3(u) else u for u in found)
    first = next(found, None)
    if first is None:
        raise ConfigError(f"{key}: no video files match '{entry}'")
    yield first
    yield from found


def iter_sources(cfg: InputConfig) -> Iterator[str]:
    """The video URIs a run processes, listed as they are consumed: entry by entry, directories and
    S3 prefixes in sorted order, list files in their own order; local files once per real path;
    the first `input.limit`. Each entry is checked (ConfigError) when the listing reaches it;
    `check_sources` checks them all before any work."""
    seen: set[str] = set()  # real paths of local files (S3 keys are unique by themselves)
    n = 0
    for i, entry in enumerate(cfg.paths):
        for uri in _entry(i, entry, cfg):
            if not is_s3(uri):
                real = os.path.realpath(uri)
                if real in seen:
                    continue
                seen.add(real)
            yield uri
            n += 1
            if cfg.limit and n >= cfg.limit:
                return


def check_sources(cfg: InputConfig) -> None:
    """ConfigError unless every `input.paths` entry names at least one source (listing only as far
    as each entry's first source) and every text list decodes (read through, nothing kept)."""
    for i, entry in enumerate(cfg.paths):
        next(_entry(i, entry, cfg))
        path = os.path.expanduser(entry)
        if not is_s3(entry) and os.path.isfile(path) and path.lower().endswith((".txt", ".lst")):
            for _ in read_lines(path):
                pass


def list_sources(cfg: InputConfig) -> list[str]:
    """Every source at once (for small inputs and tests; a run streams `iter_sources`)."""
    return list(iter_sources(cfg))
