"""Local vision-language model backend: transformers AutoProcessor + AutoModelForImageTextToText.

One class serves every chat VLM transformers knows. Families that were trained on video (Qwen2-VL,
Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision, SmolVLM2) get the clip's frames as one video with their
timestamps, so the model sees time; any other model gets them as a sequence of images. Prompts
are batched with left padding, the layout decoder-only generation needs, and each row's output is
cut at its first end token, so a batch that mixes short and long captions decodes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# model_type values whose processors take `videos=` and whose models were trained on video.
VIDEO_FAMILIES = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "llava_onevision", "smolvlm"}
# Dynamic-resolution families whose processors take a pixel budget per frame.
PIXEL_BUDGET_FAMILIES = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"}


@dataclass
class Request:
    frames: np.ndarray  # K x H x W x 3 uint8 RGB, in temporal order
    prompt: str
    fps: float | None = None  # source frame rate, for timestamps
    frame_indices: list[int] | None = None  # frame numbers relative to the clip start
    num_frames: int | None = None  # frames in the whole clip
    duration_s: float | None = None


@dataclass
class Generation:
    text: str
    tokens: int | None  # generated tokens up to the end token; None where a server does not say
    finished: bool  # False: stopped at max_new_tokens without an end token


def pick_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str, device: str):
    """bf16 on GPUs that have it (fp16 on older ones), fp32 on CPU where half precision is slow."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class VLMCaptioner:
    def __init__(
        self,
        path: str,
        *,
        dtype: str = "auto",
        device: str = "auto",
        attn_implementation: str | None = None,
        input_as: str = "auto",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        processor_kwargs: dict | None = None,
        system_prompt: str | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
    ):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.processor = AutoProcessor.from_pretrained(path)
        # Batched generation appends new tokens on the right, so prompts must be padded on the left.
        self.processor.tokenizer.padding_side = "left"
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=self.dtype, **extra)
        self.model.to(self.device).eval()
        self.family = self.model.config.model_type
        if input_as == "video" and self.family not in VIDEO_FAMILIES:
            raise ValueError(f"model type '{self.family}' does not take video input; use input: images")
        self.as_video = self.family in VIDEO_FAMILIES if input_as == "auto" else input_as == "video"
        self.processor_kwargs = dict(processor_kwargs or {})
        if self.family in PIXEL_BUDGET_FAMILIES and (min_pixels or max_pixels):
            # These processors need both bounds; the one not configured keeps the checkpoint's value.
            own = self.processor.video_processor if self.as_video else self.processor.image_processor
            size = {k: v for k, v in dict(own.size).items() if v is not None}
            size.update(self.processor_kwargs.get("size") or {})
            if min_pixels:
                size["shortest_edge"] = min_pixels
            if max_pixels:
                size["longest_edge"] = max_pixels
            self.processor_kwargs["size"] = size
        self.system_prompt = system_prompt
        self.generate_kwargs = {
            "max_new_tokens": max_new_tokens,
            "do_sample": temperature > 0,
            "repetition_penalty": repetition_penalty,
        }
        if temperature > 0:
            self.generate_kwargs.update(temperature=temperature, top_p=top_p)
        else:
            # Greedy: clear the checkpoint's sampling defaults so generate() does not warn about them.
            self.generate_kwargs.update(temperature=None, top_p=None, top_k=None)
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        pad = self.model.generation_config.pad_token_id
        if pad is None:
            pad = self.processor.tokenizer.pad_token_id
        self.stop_ids = torch.tensor(sorted(set(eos) | ({pad} if pad is not None else set())), dtype=torch.long)

    def _messages(self, req: Request) -> list[dict]:
        visual = [{"type": "video"}] if self.as_video else [{"type": "image"} for _ in range(len(req.frames))]
        messages = [{"role": "user", "content": visual + [{"type": "text", "text": req.prompt}]}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        return messages

    def _inputs(self, requests: list[Request]):
        from PIL import Image
        from transformers.video_utils import VideoMetadata

        texts = [
            self.processor.apply_chat_template(self._messages(r), add_generation_prompt=True, tokenize=False)
            for r in requests
        ]
        # Frames are H x W x 3; saying so stops processors guessing the channel axis from the shape.
        kwargs = dict(text=texts, padding=True, return_tensors="pt", input_data_format="channels_last")
        kwargs.update(self.processor_kwargs)
        if self.as_video:
            kwargs["videos"] = [np.ascontiguousarray(r.frames) for r in requests]
            # The frames are already sampled: keep them all and tell the processor when each was taken.
            kwargs["do_sample_frames"] = False
            kwargs["video_metadata"] = [
                VideoMetadata(
                    total_num_frames=r.num_frames or len(r.frames),
                    fps=r.fps,
                    duration=r.duration_s,
                    frames_indices=r.frame_indices if r.frame_indices is not None else list(range(len(r.frames))),
                )
                for r in requests
            ]
        else:
            kwargs["images"] = [[Image.fromarray(f) for f in r.frames] for r in requests]
        return self.processor(**kwargs).to(self.device, dtype=self.dtype)

    def generate(self, requests: list[Request]) -> list[Generation]:
        import torch

        inputs = self._inputs(requests)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **self.generate_kwargs)
        new = out[:, inputs["input_ids"].shape[1] :].cpu()
        results = []
        for row in new:
            stops = torch.isin(row, self.stop_ids).nonzero()
            end = int(stops[0]) if len(stops) else len(row)
            text = self.processor.tokenizer.decode(row[:end], skip_special_tokens=True)
            results.append(Generation(text=text, tokens=end, finished=bool(len(stops))))
        return results
