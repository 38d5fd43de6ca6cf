"""Pipeline YAML: read with safe_load, overridden with --set, validated before any work.

Every section refuses unknown keys. Any problem becomes one `ConfigError` line that names the key
(`clips.min_duration_s: Input should be a valid number`), which the CLI prints before exiting 2.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from curate.stage import Stage

# YAML section under `stages:` -> the class implementing it. Imported lazily: validating a config
# must not import torch.
STAGE_CLASSES: dict[str, str] = {
    "motion": "filters.motion:MotionStage",
    "text": "filters.text_overlay:TextOverlayStage",
    "quality": "filters.quality:QualityStage",
    "embedding": "filters.embedding:ClipEmbeddingStage",
    "aesthetic": "filters.aesthetic:AestheticStage",
    "dedup": "filters.dedup:DedupStage",
    "caption": "captioning.stage:CaptionStage",
    "caption_alignment": "filters.caption_alignment:CaptionAlignmentStage",
}


class ConfigError(ValueError):
    """One line naming the offending key."""


# Deepest nesting a pipeline file or --set value may have (the real ones are 4 deep); deeper YAML
# would otherwise exhaust Python's recursion limit inside the parser.
MAX_YAML_DEPTH = 32
# libx264's presets (x264 --fullhelp).
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")


class Section(BaseModel):
    # Every float of every section is finite: `.inf` or `.nan` is a slip, never a setting.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class S3Config(Section):
    endpoint_url: str | None = None
    region: str | None = None
    # Credentials come from the usual boto3 chain (AWS_ACCESS_KEY_ID/..., profiles) unless named here.
    profile: str | None = None
    access_key_env: str = "AWS_ACCESS_KEY_ID"
    secret_key_env: str = "AWS_SECRET_ACCESS_KEY"
    # Connect and read timeout of one request: a stalled response is abandoned and retried after it.
    timeout_s: float = Field(20.0, gt=0)
    # Every S3 request, body included, is retried on transient failures (resets, 5xx, throttling,
    # timeouts, cut-off bodies) with jittered exponential backoff for at most this long in total.
    retry_budget_s: float = Field(120.0, gt=0)


class InputConfig(Section):
    # Local files, directories, globs, `s3://bucket/prefix`, `pkg://package/path/*.mp4` (files a Python
    # package ships), or .txt/.parquet lists of URIs.
    paths: list[str] = Field(min_length=1)
    extensions: list[str] = [".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv"]
    # Column holding URIs when a list is a Parquet file.
    uri_column: str = "uri"
    limit: int | None = Field(None, ge=1)
    # Sources listed and handed to Ray Data at a time: a listing of millions never sits in one list.
    page_size: int = Field(4096, ge=1)
    s3: S3Config = S3Config()


class OutputConfig(Section):
    # A local directory (`~` expanded) or s3://bucket/prefix.
    path: str
    # A manifest part is committed once this many finished videos are buffered (or at the end).
    videos_per_part: int = Field(64, ge=1)
    # ...or once the oldest buffered video waited this long, so a killed run loses little work.
    flush_interval_s: float = Field(30.0, gt=0)
    s3: S3Config = S3Config()

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must name a directory or s3://bucket/prefix, not be empty")
        if v.startswith("s3://"):
            if not v[len("s3://") :].split("/", 1)[0]:
                raise ValueError(f"'{v}' names no bucket")
            return v
        return os.path.expanduser(v)


class RayConfig(Section):
    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)
    object_store_memory: int = Field(1_000_000_000, ge=78_643_200)
    # Concurrent videos in the split stage (None: one per CPU).
    split_concurrency: int | None = Field(None, ge=1)
    # Ray Data block size. Clip records carry frames (about 1-3 MB each), so small blocks keep clips
    # streaming to the next stage and the manifest writer instead of waiting for 128 MB to pile up.
    block_mb: int = Field(16, ge=1)


class FramesConfig(Section):
    # Frames sampled per clip for the scoring/captioning stages, evenly spread across the clip.
    count: int = Field(3, ge=1, le=64)
    # Short side of those frames, in pixels (aspect kept).
    size: int = Field(448, ge=16)
    # Low-resolution grayscale frames for motion and frozen-frame checks.
    motion_fps: float = Field(2.0, gt=0)
    motion_size: int = Field(128, ge=16)
    # Decoder threads (0: FFmpeg decides).
    decode_threads: int = Field(0, ge=0)
    # A video at least twice this long (s) is decoded in segments of about this length, in parallel,
    # each starting at a keyframe (MP4/MOV, Matroska/WebM); the clips are the same. 0: one pass.
    segment_s: float = Field(30.0, ge=0)


class ShotsConfig(Section):
    # auto: transnetv2 when a GPU is present, else curate (cuts, dissolves, fades; see bench/README.md).
    detector: Literal["auto", "curate", "adaptive", "content", "transnetv2", "stride"] = "auto"
    # Detector threshold; None keeps each detector's default.
    threshold: float | None = Field(None, ge=0)
    # Shortest shot, in seconds (15 frames at 25 fps): boundaries closer than this merge into one
    # transition; a black or frozen run this long at either end of a video is a scene of its own.
    min_scene_len_s: float = Field(0.6, gt=0)
    stride_s: float = Field(10.0, gt=0)
    # Width of the small frames PySceneDetect detectors see; curate always sees 64x36, TransNetV2 48x27.
    detect_width: int = Field(256, ge=32)
    weights: str | None = None


class ClipsConfig(Section):
    min_duration_s: float = Field(2.0, ge=0)
    max_duration_s: float | None = Field(60.0, gt=0)
    trim_s: float = Field(0.0, ge=0)
    mode: Literal["reference", "mp4"] = "reference"
    fps: float | None = Field(None, gt=0)
    short_side: int | None = Field(None, ge=16)
    crf: int = Field(20, ge=0, le=51)
    preset: Literal[X264_PRESETS] = "veryfast"

    @model_validator(mode="after")
    def _durations(self) -> ClipsConfig:
        if self.max_duration_s is not None and self.max_duration_s < self.min_duration_s:
            raise ValueError("max_duration_s must be >= min_duration_s")
        return self


class FilterConfig(Section):
    # Extra rules on any manifest column: `column >= value`, `<=`, `>`, `<`, `==`, `!=`.
    rules: list[str] = []


class PipelineConfig(Section):
    input: InputConfig
    output: OutputConfig
    ray: RayConfig = RayConfig()
    frames: FramesConfig = FramesConfig()
    shots: ShotsConfig = ShotsConfig()
    clips: ClipsConfig = ClipsConfig()
    stages: dict[str, dict[str, Any]] = {}
    filter: FilterConfig = FilterConfig()
    # WebDataset shards of the kept clips as the run's last step (keys: `curate shard --help`).
    shard: dict[str, Any] | None = None

    def build_stages(self) -> list[Stage]:
        """Instantiate the configured stages in their fixed order (validates each section)."""
        return _build_stages(self.stages)

    def shard_config(self):
        """The `shard:` section as a ShardConfig (None when absent); S3 settings default to the output's."""
        if self.shard is None:
            return None
        from curate.shard import ShardConfig

        section = dict(self.shard)
        section.setdefault("s3", self.output.s3.model_dump())
        try:
            return ShardConfig.model_validate(section)
        except ValidationError as e:
            raise ConfigError(one_line_error(e, prefix="shard")) from None


def stage_class(name: str) -> type[Stage]:
    module, cls = STAGE_CLASSES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def _build_stages(sections: dict[str, dict[str, Any]]) -> list[Stage]:
    stages = []
    for name, section in sections.items():
        if name not in STAGE_CLASSES:
            raise ConfigError(f"stages.{name}: unknown stage (known: {', '.join(STAGE_CLASSES)})")
        try:
            stage = stage_class(name).model_validate(section or {})
        except ValidationError as e:
            raise ConfigError(one_line_error(e, prefix=f"stages.{name}")) from None
        if stage.enabled:
            stages.append(stage)
    return sorted(stages, key=lambda s: s.order)


def one_line_error(e: ValidationError, prefix: str = "") -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in ((prefix,) if prefix else ()) + tuple(err["loc"]))
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{loc or '<root>'}: {msg}{more}"


class _Loader(yaml.SafeLoader):
    """Safe YAML with YAML 1.2 booleans (only true/false) and at most MAX_YAML_DEPTH levels.

    PyYAML follows YAML 1.1, where a bare `off`, `no`, `on` or `yes` is a boolean, so `mode: off`
    arrived as false; boolean fields still take those words (pydantic parses them)."""

    _depth = 0

    def compose_node(self, parent, index):
        # The composer recurses once per level: a deep document is refused at its first node past
        # the limit instead of exhausting the interpreter's stack.
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.MarkedYAMLError(problem=f"nested deeper than {MAX_YAML_DEPTH} levels", problem_mark=mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_Loader.yaml_implicit_resolvers = {
    k: [r for r in v if r[0] != "tag:yaml.org,2002:bool"] for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def _yaml_reason(e: yaml.YAMLError) -> str:
    """`problem, line L column C` for a YAML error (PyYAML's own text spans several lines)."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem:
        mark = e.problem_mark
        return f"{e.problem}, line {mark.line + 1} column {mark.column + 1}" if mark else e.problem
    return " ".join(str(e).split())


def read_text(path: str | Path) -> str:
    """A config or list file as UTF-8 text; anything else is one ConfigError naming the file."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def read_lines(path: str | Path) -> Iterator[str]:
    """A list file's lines as UTF-8, read as they are needed; ConfigError naming the file and line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} on line {n})") from None


def read_sections(path: str | Path, kind: str, allow_empty: bool = False) -> dict:
    """A YAML file of config sections (`kind`: "pipeline", "training"), or one ConfigError line."""
    path = Path(path)
    try:
        raw = parse_yaml(read_text(path))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {kind} file ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({_yaml_reason(e)})") from None
    if raw is None and allow_empty:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a {kind} file must be a mapping of sections")
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`--set a.b.c=value`: value parsed as YAML, so numbers, booleans and lists keep their types."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected key.path=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {item}: '{key}' is not a key path such as clips.max_duration_s")
        try:
            parsed = parse_yaml(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: invalid YAML value ({_yaml_reason(e)})") from None
        node = raw
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"{key}: '{p}' is not a section")
            node = nxt
        node[parts[-1]] = parsed
    return raw


def load_options(model: type[BaseModel], overrides: list[str], prefix: str, **flags):
    """A command's options: `model` validated from its `--set` overrides with the command's own
    flags on top (None: not given). ConfigError with one line naming the key (`prefix.key: ...`)."""
    raw = apply_overrides({}, overrides)
    raw.update({k: v for k, v in flags.items() if v is not None})
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(one_line_error(e, prefix=prefix)) from None


def load_config(path: str | Path, overrides: list[str] = ()) -> PipelineConfig:
    raw = apply_overrides(read_sections(path, "pipeline", allow_empty=True), list(overrides))
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(one_line_error(e)) from None
    cfg.build_stages()  # validate stage and shard sections now, before any work
    cfg.shard_config()
    return cfg
