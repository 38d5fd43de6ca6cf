"""The bundled video DiT trainer: `curate train`, `curate sample` (and `curate shard` for its input)."""
