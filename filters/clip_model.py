"""open_clip models, loaded only through the project's model resolver.

Every CLIP-using stage (embedding, aesthetic, caption alignment) carries the same `clip:` block, so
one YAML anchor can configure them all. The weights file comes from `curate.models` (explicit
`clip.weights` path, then $CURATE_MODEL_DIR/<model>-<pretrained>, then the Hugging Face cache of
the repository open_clip itself would download from, then a download when online); open_clip is
never allowed to fetch anything on its own.

CLIP runs once per clip: the embedding stage leaves the per-frame image embeddings on the record
(transient `frame_embeddings`, tagged with the model's `identity`), and later stages configured with
the same `clip:` block reuse them instead of encoding the frames again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curate.models import ModelRef, fetch

# Checkpoint names open_clip uses inside a Hugging Face repository, preferred first.
HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class ClipSpec(BaseModel):
    """The `clip:` block: which open_clip model, and where its weights come from."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), populate_by_name=True)

    model: str = "ViT-L-14"
    # An open_clip pretrained tag (it picks the hub repository and the preprocessing); None for a
    # custom model whose weights are given explicitly.
    pretrained: str | None = "openai"
    # Local checkpoint file (or a folder holding one); overrides every other source.
    weights: str | None = None
    # An open_clip model-config JSON (its file stem is the model name) for architectures open_clip
    # does not ship; registered with open_clip.add_model_config before loading.
    config_file: str | None = Field(None, alias="model_config")

    @property
    def identity(self) -> str:
        """Equal identities mean interchangeable embeddings (same architecture and weights)."""
        return "|".join([self.model, self.pretrained or "", self.weights or "", self.config_file or ""])

    def _register(self) -> None:
        if self.config_file:
            import open_clip

            open_clip.add_model_config(self.config_file)

    def _tag_cfg(self) -> dict:
        """The pretrained tag's settings (hub repository, activation, preprocessing); registers a
        custom model config first, so every process that loads the model knows the architecture."""
        import open_clip

        self._register()
        return open_clip.get_pretrained_cfg(self.model, self.pretrained) if self.pretrained else {}

    def ref(self, stage: str) -> ModelRef:
        hub = (self._tag_cfg().get("hf_hub") or "").strip("/")
        name = f"{self.model}-{self.pretrained}" if self.pretrained else self.model
        return ModelRef(
            name=name,
            stage=stage,
            local_path=self.weights,
            hf_repo=hub or None,
            hf_filename=HF_WEIGHT_FILES[0] if hub else None,
            key="clip.weights",
            # OpenAI's CLIP weights: MIT (openai/CLIP LICENSE); other tags are not recorded.
            license="MIT" if self.pretrained == "openai" else None,
        )


def checkpoint_file(path: str) -> str:
    """The checkpoint inside a resolved path (a file as is, or a folder holding one)."""
    p = Path(path)
    if p.is_file():
        return str(p)
    for name in HF_WEIGHT_FILES:
        if (p / name).is_file():
            return str(p / name)
    found = sorted(f for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    if len(found) != 1:
        raise FileNotFoundError(f"{p}: expected one open_clip checkpoint in the folder, found {len(found)}")
    return str(found[0])


class ClipEncoder:
    """A loaded open_clip model with batched image and text encoders returning L2-normalised float32."""

    def __init__(self, spec: ClipSpec, stage: str):
        import open_clip
        import torch

        self.identity = spec.identity
        path = checkpoint_file(fetch(spec.ref(stage)))
        tag = spec._tag_cfg()
        # With a file path open_clip cannot see the tag, so its activation and preprocessing are passed on.
        prep = {k: tag[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag}
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.model,
            pretrained=path,
            force_quick_gelu=bool(tag.get("quick_gelu")),
            image_mean=prep.get("mean"),
            image_std=prep.get("std"),
            image_interpolation=prep.get("interpolation"),
            image_resize_mode=prep.get("resize_mode"),
            device=self.device,
        )
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(spec.model)
        self.logit_scale = float(model.logit_scale.exp().item())

    def _run(self, fn, x):
        import torch

        # fp16 autocast on a GPU (LayerNorm and softmax stay fp32); plain fp32 on the CPU.
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.device == "cuda"):
            out = fn(x.to(self.device))
        out = torch.nn.functional.normalize(out.float(), dim=-1)
        return out.cpu().numpy().astype(np.float32)

    def encode_images(self, frames: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """N H x W x 3 uint8 RGB frames (sizes may differ) -> N x D unit vectors."""
        import torch
        from PIL import Image

        out = []
        for i in range(0, len(frames), batch_size):
            x = torch.stack([self.preprocess(Image.fromarray(f)) for f in frames[i : i + batch_size]])
            out.append(self._run(self.model.encode_image, x))
        return np.concatenate(out)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self._run(self.model.encode_text, self.tokenizer(texts))


# The transient columns a CLIP stage reads: the frames, and the embeddings a CLIP stage before it left.
CLIP_READS = frozenset({"frames", "frame_embeddings", "frame_embeddings_model"})


def frame_embeddings(clips: list[dict], spec: ClipSpec, encoder_factory) -> list[np.ndarray | None]:
    """Per-frame image embeddings (K x D) of each clip: reused when an earlier stage computed them
    with the same model, else encoded now (all clips of the batch in one go). None: no frames.

    `encoder_factory()` returns the loaded ClipEncoder; it is only called when something must be
    encoded, so a stage whose embeddings all come from upstream never loads CLIP."""
    out: list[np.ndarray | None] = [None] * len(clips)
    todo = []
    for i, c in enumerate(clips):
        if c.get("frame_embeddings") is not None and c.get("frame_embeddings_model") == spec.identity:
            out[i] = np.asarray(c["frame_embeddings"], dtype=np.float32)
        elif c.get("frames") is not None and len(c["frames"]):
            todo.append(i)
    if todo:
        enc = encoder_factory()
        emb = enc.encode_images([f for i in todo for f in clips[i]["frames"]])
        at = 0
        for i in todo:
            k = len(clips[i]["frames"])
            out[i] = emb[at : at + k]
            at += k
    return out


def clip_vector(frame_emb: np.ndarray) -> np.ndarray:
    """The clip's embedding: mean of its frame embeddings, re-normalised."""
    v = frame_emb.mean(axis=0)
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)
