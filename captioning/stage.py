"""The caption stage: a dense caption per kept clip from a vision-language model.

Two backends share one prompt, cleanup and status path. `vlm` loads a transformers checkpoint
in each actor (bf16 on a GPU) and batches generation; `endpoint` sends the same request to an
OpenAI-compatible server the user runs (vLLM, SGLang, a hosted API), where batching happens on
the server. Every captioned clip records which model wrote its caption and whether the caption
is usable (`ok`), missing (`empty`), cut at the token limit (`truncated`) or failed (`error`),
so a training set can be selected on captions without reading them.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, PrivateAttr, field_validator, model_validator

from captioning import prompts
from captioning.vlm import Generation, Request
from curate.config import Section
from curate.models import ModelRef, fetch
from curate.stage import Stage

log = logging.getLogger(__name__)

# Apache-2.0 weights (the 3B sibling is under a research-only licence), native video input with
# timestamps, and the captioner Cosmos-Curate defaults to; about 17 GB in bf16.
DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"


class EndpointConfig(Section):
    """Where and how to reach an OpenAI-compatible /v1/chat/completions server."""

    base_url: str = "http://127.0.0.1:8000/v1"
    # Name of the environment variable holding the API key (never the key itself); unset: no auth.
    api_key_env: str = "OPENAI_API_KEY"
    # Requests in flight per actor; the stage's pool_size actors multiply it.
    concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0)
    # Retries of 429, 5xx, timeouts and dropped connections, with exponential backoff and jitter.
    max_retries: int = Field(5, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    max_backoff_s: float = Field(60.0, ge=0)
    jpeg_quality: int = Field(90, ge=1, le=100)
    # Merged into every request body (e.g. {top_k: 20} or {chat_template_kwargs: {...}} for vLLM).
    extra_body: dict[str, Any] = {}


class CaptionStage(Stage):
    name: ClassVar[str] = "caption"
    order: ClassVar[int] = 70
    reads: ClassVar[frozenset[str]] = frozenset({"frames"})
    kept_only: ClassVar[bool] = True
    uses_gpu: ClassVar[bool] = True
    # A 7B VLM in bf16 plus its activations wants most of a 24-40 GB GPU; set num_gpus: 0.5 on 80 GB.
    gpu_fraction: ClassVar[float] = 1.0

    backend: Literal["vlm", "endpoint"] = "vlm"
    # Hugging Face repo id or local directory (vlm), or the served model name (endpoint).
    model: str = DEFAULT_MODEL
    # A local copy of `model` (vlm); takes precedence over $CURATE_MODEL_DIR, the HF cache and downloads.
    weights: str | None = None
    # A built-in template ('detailed', 'short') or template text with {num_frames} and {duration_s}.
    prompt: str = "detailed"
    system_prompt: str | None = None
    max_new_tokens: int = Field(256, ge=1)
    # 0: greedy decoding (reproducible); above 0: sampling with top_p.
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    # vlm: Qwen's recommended 1.05 keeps greedy decoding from looping in long captions.
    repetition_penalty: float = Field(1.05, gt=0)
    # auto: one video for families trained on video, else one image per frame.
    frames_as: Literal["auto", "video", "images"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    device: str = "auto"
    # e.g. flash_attention_2 or sdpa; None: transformers' default.
    attn_implementation: str | None = None
    # Per-frame pixel budget of dynamic-resolution models (Qwen-VL). Qwen's own minimum for video
    # (about 100k pixels) would upscale small frames, so the floor defaults to 56x56.
    min_pixels: int | None = Field(56 * 56, ge=1)
    max_pixels: int | None = Field(None, ge=1)
    # Passed to the processor call as is (e.g. {size: {longest_edge: 768}} for SmolVLM).
    processor_kwargs: dict[str, Any] = {}
    endpoint: EndpointConfig = EndpointConfig()

    _backend: Any = PrivateAttr(None)
    _model_name: str = PrivateAttr("")

    @field_validator("prompt")
    @classmethod
    def _template(cls, prompt: str) -> str:
        prompts.template_for(prompt)
        return prompt

    @model_validator(mode="after")
    def _no_gpu_for_endpoint(self) -> CaptionStage:
        # The endpoint's server holds the GPU; its actors only wait on HTTP.
        if self.backend == "endpoint" and self.num_gpus is None:
            self.num_gpus = 0.0
        return self

    @property
    def uses_actors(self) -> bool:
        """Both backends keep state per actor: a loaded model, or a connection and thread pool whose
        size times `pool_size` bounds the requests in flight."""
        return True

    def outputs(self) -> list[pa.Field]:
        return [
            pa.field("caption", pa.string()),
            pa.field("caption_model", pa.string()),
            pa.field("caption_status", pa.string()),
            pa.field("caption_tokens", pa.int32()),
        ]

    def models(self) -> list[ModelRef]:
        if self.backend == "endpoint":
            return []
        local = self.weights or (self.model if _is_path(self.model) else None)
        return [
            ModelRef(
                name=Path(self.model.rstrip("/")).name,
                stage=self.name,
                local_path=local,
                hf_repo=None if _is_path(self.model) else self.model,
                # The default model's card on the Hugging Face Hub says Apache-2.0; others are not
                # recorded (sizes of one family differ: check each model's card).
                license="Apache-2.0" if self.model == DEFAULT_MODEL else None,
            )
        ]

    def setup(self) -> None:
        common = dict(
            system_prompt=self.system_prompt,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
        )
        if self.backend == "endpoint":
            from captioning.endpoint import EndpointCaptioner

            self._backend = EndpointCaptioner(model=self.model, **self.endpoint.model_dump(), **common)
            self._model_name = self.model
            return
        from captioning.vlm import VLMCaptioner

        path = fetch(self.models()[0])
        self._backend = VLMCaptioner(
            path,
            dtype=self.dtype,
            device=self.device,
            attn_implementation=self.attn_implementation,
            input_as=self.frames_as,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
            processor_kwargs=self.processor_kwargs,
            repetition_penalty=self.repetition_penalty,
            **common,
        )
        self._model_name = provenance(self.model, path)

    def process_batch(self, clips: list[dict]) -> list[dict]:
        template = prompts.template_for(self.prompt)
        todo: list[tuple[dict, Request]] = []
        for clip in clips:
            clip["caption_model"] = self._model_name
            frames = clip.get("frames")
            if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
                _write(clip, ValueError("no K x H x W x 3 RGB frames to caption"))
                continue
            todo.append((clip, self.request(clip, template)))
        for clip, result in zip((c for c, _ in todo), self._generate([r for _, r in todo])):
            _write(clip, result)
        return clips

    def request(self, clip: dict, template: str) -> Request:
        """The backend request for one clip: its frames, its prompt, and when each frame was taken."""
        # VLM processors place frames in time by index and frame rate: indices at the clip's average rate
        # put each sampled frame at its presentation time, on variable-frame-rate footage too.
        fps, times = clip.get("fps"), clip.get("frame_times")
        start = clip.get("start_s") or 0.0
        return Request(
            frames=clip["frames"],
            prompt=prompts.render(template, len(clip["frames"]), clip.get("duration_s")),
            fps=fps,
            frame_indices=[round((t - start) * fps) for t in times] if times is not None and fps else None,
            num_frames=clip.get("num_frames"),
            duration_s=clip.get("duration_s"),
        )

    def _generate(self, reqs: list[Request]) -> list[Generation | Exception]:
        """One Generation or exception per request, in order."""
        if self.backend == "endpoint":
            return self._backend.generate(reqs)
        # Clips with the same frame count batch together (LLaVA-OneVision cannot mix counts).
        groups: dict[int, list[int]] = defaultdict(list)
        for i, r in enumerate(reqs):
            groups[len(r.frames)].append(i)
        results: dict[int, Generation | Exception] = {}
        for idx in groups.values():
            results.update(zip(idx, self._generate_batch([reqs[i] for i in idx])))
        return [results[i] for i in range(len(reqs))]

    def _generate_batch(self, reqs: list[Request]) -> list[Generation | Exception]:
        try:
            return self._backend.generate(reqs)
        except Exception as e:
            if len(reqs) == 1:
                log.warning("captioning failed: %r", e, exc_info=True)
                return [e]
        # One bad clip (or a batch too big for memory) should not fail its neighbours: retry singly.
        _free_cuda_cache()
        return [r for req in reqs for r in self._generate_batch([req])]


def _write(clip: dict, result: Generation | Exception) -> None:
    """Fill the caption columns from a Generation, or record why there is no caption."""
    if isinstance(result, Exception):
        clip.update(caption=None, caption_status="error", caption_tokens=None)
        clip["errors"] = list(clip.get("errors") or []) + [f"caption: {type(result).__name__}: {result}"]
        return
    text = prompts.clean(result.text)
    clip.update(
        caption=text or None,
        caption_status=prompts.status(text, result.finished),
        caption_tokens=result.tokens,
    )


def _is_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or Path(model).expanduser().exists()


_SNAPSHOT = re.compile(r"/snapshots/([0-9a-f]{40})/?$")


def provenance(model: str, path: str) -> str:
    """`org/name@commit` when the weights came from the Hugging Face cache, else the name as given."""
    m = _SNAPSHOT.search(str(path))
    return f"{model}@{m.group(1)}" if m and not _is_path(model) else model


def _free_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
