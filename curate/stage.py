"""The stage API every scoring, filtering and captioning step implements.

A stage is a small pydantic model: its fields are its YAML section (validated, unknown keys
refused) plus the resources it asks Ray for. `setup()` loads models once per worker or actor;
`process_batch()` takes clip records and returns them with the stage's columns filled and is
otherwise pure. Stages that hold a model run as a Ray actor pool (`pool_size` actors, each with
`num_gpus` of a GPU when one is present); pixel stages run in the decode tasks or as plain Ray
tasks (curate.engine.operator_stages).

Scores and decisions are separate: a scoring stage always writes its columns unless its mode is
`off`; whether a threshold removes the clip is decided later by the filter stage from the
`filter_rules()` of every stage in `filter` mode plus the pipeline's explicit rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from curate.models import ModelRef
    from curate.storage import Store

Mode = Literal["filter", "score-only", "off"]


class Stage(BaseModel):
    # As config sections: unknown keys refused, every float finite. A stage that redeclares one of
    # the fields below (a default of its own) keeps its bound: `Field(16, ge=1)`.
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False)

    # Registry key (the stage's YAML section name) and its place in the fixed stage order.
    name: ClassVar[str] = "stage"
    order: ClassVar[int] = 100
    # Stages that only make sense on clips the filter kept (captioning, transcoding) set this.
    kept_only: ClassVar[bool] = False
    # A few microseconds a clip over its columns (the filter's rules): runs in the Ray Data operator
    # before it instead of one of its own (engine.operator_stages).
    light: ClassVar[bool] = False
    # Transient columns (frames, motion_frames, frame_embeddings, ...) the stage reads or writes.
    reads: ClassVar[frozenset[str]] = frozenset({"frames", "motion_frames", "frame_embeddings", "frame_embeddings_model"})

    mode: Mode = "score-only"
    num_cpus: float = Field(1.0, gt=0)
    # None: a fraction of a GPU (`gpu_fraction`) when the cluster has GPUs and the stage can use one, else 0.
    num_gpus: float | None = Field(None, ge=0)
    batch_size: int = Field(8, ge=1)
    pool_size: int = Field(1, ge=1)
    # Memory each model actor reserves for its weights and activations (None: `default_memory_mb`).
    memory_mb: int | None = Field(None, ge=1)

    # Whether the stage can use a GPU at all, and how much of one it asks for by default.
    uses_gpu: ClassVar[bool] = False
    gpu_fraction: ClassVar[float] = 0.25
    default_memory_mb: ClassVar[int] = 1024

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def uses_actors(self) -> bool:
        """Model stages keep their model loaded in a pool of actors; the rest are stateless tasks."""
        return bool(self.models())

    def outputs(self) -> list[pa.Field]:
        """Columns this stage adds to the clips manifest (null where not computed)."""
        return []

    def models(self) -> list[ModelRef]:
        """Weights this stage needs; resolved before any work so a missing one fails at start."""
        return []

    def filter_rules(self) -> list[str]:
        """Threshold rules (`column op value`) applied when `mode == 'filter'`."""
        return []

    def setup(self) -> None:
        """Load models once per worker/actor."""

    def process_batch(self, clips: list[dict]) -> list[dict]:
        raise NotImplementedError


class GlobalStage(Stage):
    """A stage that needs every clip at once (dedup); runs on the finished clips manifest."""

    def process_manifest(self, store: Store) -> object:
        """Rewrite the committed clips parts of the output `store`, part by part, without holding
        the manifest in this process; returns what it did (printed by the run)."""
        raise NotImplementedError
