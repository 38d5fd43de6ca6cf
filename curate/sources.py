"""Turns `input.paths` into the sorted list of video URIs a run processes.

An entry that exists as given is that file or directory whatever characters its name holds
(`clip [1].mp4`, `what?.mp4`); only an entry that does not exist is tried as a glob. Local sources
are deduplicated by their real path, so a file reached through symlinks (or a recursive glob
through a symlink loop) is processed once, under the first of its names in sorted order.
"""

from __future__ import annotations

import glob
import importlib.util
import os

from curate.config import ConfigError, InputConfig, read_text
from curate.storage import is_s3, list_s3

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


def _read_list(path: str, cfg: InputConfig) -> list[str]:
    if path.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(path)
        except (pa.ArrowException, OSError) as e:
            raise ConfigError(f"{path}: not a readable Parquet list ({e})") from None
        if cfg.uri_column not in schema.names:
            raise ConfigError(f"input.uri_column: '{cfg.uri_column}' is not a column of {path}")
        kind = schema.field(cfg.uri_column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise ConfigError(f"input.uri_column: column '{cfg.uri_column}' of {path} holds {kind}, not strings")
        column = pq.read_table(path, columns=[cfg.uri_column]).column(cfg.uri_column).to_pylist()
        return [u for u in column if u]
    base = os.path.dirname(os.path.abspath(path))
    out = []
    for line in read_text(path).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        # Relative entries are relative to the list file, like a playlist.
        out.append(line if is_s3(line) or os.path.isabs(line) else os.path.join(base, line))
    return out


def _one_per_file(paths: list[str]) -> list[str]:
    """Sorted local paths, each real file once (under its first name); S3 URIs unchanged."""
    seen: set[str] = set()
    out = []
    for p in sorted(dict.fromkeys(paths)):
        real = p if is_s3(p) else os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            out.append(p)
    return out


def list_sources(cfg: InputConfig) -> list[str]:
    uris: list[str] = []
    for i, entry in enumerate(cfg.paths):
        key = f"input.paths[{i}]"
        if is_s3(entry):
            found = [u for u in list_s3(entry, cfg.s3) if _is_video(u, cfg.extensions)]
        else:
            path = package_path(entry) if entry.startswith("pkg://") else os.path.expanduser(entry)
            if os.path.isdir(path):
                found = sorted(
                    os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs if _is_video(f, cfg.extensions)
                )
            elif os.path.isfile(path) and path.lower().endswith(LIST_SUFFIXES):
                found = _read_list(path, cfg)
            elif os.path.lexists(path):
                # Any other existing entry is a source, even a FIFO or a device: reading it
                # decides (an error row), not the listing.
                found = [path]
            elif glob.has_magic(path):
                found = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
            else:
                raise ConfigError(f"{key}: '{entry}' does not exist")
            found = [u if is_s3(u) else os.path.abspath(u) for u in found]
        if not found:
            raise ConfigError(f"{key}: no video files match '{entry}'")
        uris += found
    uris = _one_per_file(uris)
    return uris[: cfg.limit] if cfg.limit else uris
