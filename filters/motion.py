"""Motion score: dense optical flow on the clip's low-resolution grayscale frames (about 2 fps).

For each consecutive pair of motion frames the mean flow magnitude is divided by the frame diagonal
(so it does not depend on resolution) and by the time between the two frames (the decoder thins
the cadence on long shots, so pairs are not always equally spaced). The unit is frame diagonals
per second: a frozen clip scores about 0, a slow pan a few hundredths, a whip pan several tenths.
`motion_score` is the mean over pairs; `motion_min` and `motion_max` catch a clip that freezes or
jolts part of the way.

Flow between frames half a second apart has a limited reach: on the tests' textured pan, DIS
tracks the true speed within 1% up to shifts of about 9% of the frame width per pair (0.2
diagonals/s at 2 fps) and under-measures beyond (at 11%: 43% of the speed with the `fast` preset,
54% with `medium`), Farneback reaches about half as far. Raise `frames.motion_fps` for footage full
of whip pans. `preset: fast` (the default) costs 40% of `medium`'s CPU (215 quickstart clips: 1.6
against 4.0 s) for the same AUC and margins in `bench/scoring_auc.py`; on real footage moving fast
its scores run up to about 8% lower.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import cv2
import numpy as np
import pyarrow as pa
from pydantic import Field

from curate.stage import Stage


def flow_magnitude(prev: np.ndarray, nxt: np.ndarray, method: str, dis=None) -> float:
    """Mean optical-flow magnitude in pixels between two grayscale frames."""
    if method == "dis":
        flow = dis.calc(prev, nxt, None)
    else:
        flow = cv2.calcOpticalFlowFarneback(prev, nxt, None, 0.5, 5, 15, 10, 7, 1.5, 0)
    return float(np.sqrt((flow * flow).sum(axis=2)).mean())


class MotionStage(Stage):
    name: ClassVar[str] = "motion"
    order: ClassVar[int] = 20
    reads: ClassVar[frozenset[str]] = frozenset({"motion_frames"})

    method: Literal["dis", "farneback"] = "dis"
    # OpenCV's DIS presets: `fast` searches each pyramid level with fewer descent iterations than `medium`.
    preset: Literal["ultrafast", "fast", "medium"] = "fast"
    # Thresholds on motion_score (frame diagonals per second), applied in filter mode.
    min_score: float | None = Field(0.002, ge=0)
    max_score: float | None = Field(None, ge=0)
    batch_size: int = Field(16, ge=1)

    def outputs(self) -> list[pa.Field]:
        return [pa.field(n, pa.float64()) for n in ("motion_score", "motion_min", "motion_max")]

    def filter_rules(self) -> list[str]:
        rules = []
        if self.min_score is not None:
            rules.append(f"motion_score >= {self.min_score}")
        if self.max_score is not None:
            rules.append(f"motion_score <= {self.max_score}")
        return rules

    def setup(self) -> None:
        preset = getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{self.preset.upper()}")
        self._dis = cv2.DISOpticalFlow_create(preset) if self.method == "dis" else None

    def clip_motion(self, frames: np.ndarray, times: list[float]) -> list[float]:
        """Per-pair motion in frame diagonals per second, `times` the frames' presentation times (s;
        per pair when they are unknown)."""
        h, w = frames.shape[1:3]
        diag = float(np.hypot(h, w))
        out = []
        for i in range(len(frames) - 1):
            dt = times[i + 1] - times[i] if len(times) == len(frames) else 1.0
            out.append(flow_magnitude(frames[i], frames[i + 1], self.method, self._dis) / diag / max(dt, 1e-6))
        return out

    def process_batch(self, clips: list[dict]) -> list[dict]:
        for c in clips:
            frames = c.get("motion_frames")
            if frames is None or len(frames) < 2:
                c["motion_score"] = c["motion_min"] = c["motion_max"] = None
                continue
            m = self.clip_motion(frames, list(c.get("motion_frame_times") or []))
            c["motion_score"], c["motion_min"], c["motion_max"] = float(np.mean(m)), min(m), max(m)
        return clips
