"""Multi-worker training: the same train function on every rank of a Ray Train TorchTrainer.

Ray starts the workers and the torch.distributed group (gloo on CPU, nccl on GPU); the train
function wraps the model in DDP, shards batches by rank and writes checkpoints from rank 0 into
`run_dir`, which every worker must see (one node, or a shared filesystem).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from curate.storage import is_s3
from curate.train.checkpoint import list_checkpoints
from curate.train.config import TrainConfig


def _absolute(cfg: TrainConfig) -> TrainConfig:
    """Workers may start in another directory: pin relative paths to the driver's."""
    data = cfg.data.model_copy(
        update={k: os.path.abspath(v) for k in ("manifest", "shards") if (v := getattr(cfg.data, k)) and not is_s3(v)}
    )
    return cfg.model_copy(update={"run_dir": os.path.abspath(cfg.run_dir), "data": data})


def _worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from curate.train.loop import train

    cfg = TrainConfig.model_validate(config["cfg"])
    train(cfg, config["resume"], device=ray.train.torch.get_device(), report=ray.train.report)


def run(cfg: TrainConfig, resume: str | None = None) -> dict:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = _absolute(cfg)
    if not ray.is_initialized():
        ray.init(address=cfg.ray.address, include_dashboard=False)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "resume": resume},
        scaling_config=ScalingConfig(
            num_workers=cfg.ray.num_workers,
            use_gpu=cfg.ray.use_gpu,
            resources_per_worker={"CPU": cfg.ray.cpus_per_worker, **({"GPU": 1} if cfg.ray.use_gpu else {})},
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.ray.use_gpu else "gloo"),
        run_config=RunConfig(name="ray", storage_path=str(Path(cfg.run_dir))),
    )
    trainer.fit()
    # Ray keeps metrics only alongside its own checkpoints; ours are files in run_dir, so the result
    # is rank 0's last log line and newest checkpoint.
    last = json.loads((Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()[-1])
    found = list_checkpoints(cfg.run_dir)
    return {**last, "checkpoint": str(found[-1])} if found else last
