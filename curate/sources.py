"""Turns `input.paths` into the sorted list of video URIs a run processes."""

from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path

from curate.config import ConfigError, InputConfig
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
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if cfg.uri_column not in table.column_names:
            raise ConfigError(f"input.uri_column: '{cfg.uri_column}' is not a column of {path}")
        return [u for u in table.column(cfg.uri_column).to_pylist() if u]
    lines = Path(path).read_text().splitlines()
    base = os.path.dirname(os.path.abspath(path))
    out = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        # Relative entries are relative to the list file, like a playlist.
        out.append(line if is_s3(line) or os.path.isabs(line) else os.path.join(base, line))
    return out


def list_sources(cfg: InputConfig) -> list[str]:
    uris: list[str] = []
    for i, entry in enumerate(cfg.paths):
        key = f"input.paths[{i}]"
        if is_s3(entry):
            found = [u for u in list_s3(entry, cfg.s3) if _is_video(u, cfg.extensions)]
        else:
            path = package_path(entry) if entry.startswith("pkg://") else os.path.expanduser(entry)
            if glob.has_magic(path):
                found = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
            elif os.path.isdir(path):
                found = sorted(
                    os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs if _is_video(f, cfg.extensions)
                )
            elif os.path.isfile(path) and path.lower().endswith(LIST_SUFFIXES):
                found = _read_list(path, cfg)
            elif os.path.isfile(path):
                found = [path]
            else:
                raise ConfigError(f"{key}: '{entry}' does not exist")
            found = [u if is_s3(u) else os.path.abspath(u) for u in found]
        if not found:
            raise ConfigError(f"{key}: no video files match '{entry}'")
        uris += found
    uris = sorted(dict.fromkeys(uris))
    return uris[: cfg.limit] if cfg.limit else uris
