"""Technical quality from pixels alone, no weights: sharpness, exposure, black borders, frozen frames.

- `border_share`: share of the frame area taken by letterbox/pillarbox bars, found as rows/columns
  at the edges that are dark and flat in every sampled frame. The other measures skip the bars, so
  a letterboxed film is not called dark or sharp-edged because of them.
- `sharpness`: variance of the Laplacian of the picture area at a fixed short side
  (`sharpness_size`, the default frame size), mean over the sampled frames. Frames from a source
  smaller than that are upscaled first, so a low-resolution source scores as soft as it will look
  at training size instead of sharper (the raw Laplacian of a small frame is higher).
- `luma_mean` (0-1), `crushed_share` and `blown_share`: mean luma and the share of pixels at or
  below `crushed_level` / at or above `blown_level` (8-bit luma), over the sampled frames.
- `frozen_share`: share of consecutive motion frames (about 2 fps) that are identical up to noise.
"""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np
import pyarrow as pa
from pydantic import Field

from curate.stage import Stage

COLUMNS = ("sharpness", "luma_mean", "crushed_share", "blown_share", "border_share", "frozen_share")


def border_box(gray: np.ndarray, level: float = 16.0, flat: float = 6.0, min_span: float = 0.2) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the picture inside black bars common to all frames (K x H x W).
    Bars are near-black and flat in every frame. If they would leave less than `min_span` of a side, or
    nothing inside is clearly brighter, it is a dark picture rather than a letterbox (the exposure
    columns report that)."""
    g = gray.astype(np.float32)

    def dark(axis: int) -> np.ndarray:  # per row (axis=2) or column (axis=1), in every frame
        return ((g.mean(axis=axis) <= level) & (g.std(axis=axis) <= flat)).all(axis=0)

    def span(flags: np.ndarray) -> tuple[int, int]:
        n = len(flags)
        if flags.all():
            return 0, n
        lead, trail = int(np.argmin(flags)), int(np.argmin(flags[::-1]))
        return (0, n) if n - lead - trail < min_span * n else (lead, n - trail)

    top, bottom = span(dark(2))
    left, right = span(dark(1))
    # Bars frame a picture: some row inside must be clearly brighter than black, or it is a dark scene.
    if g[:, top:bottom, left:right].mean(axis=2).max() < 3 * level:
        return 0, g.shape[1], 0, g.shape[2]
    return top, bottom, left, right


def frozen_share(motion_frames: np.ndarray | None, max_diff: float) -> float | None:
    if motion_frames is None or len(motion_frames) < 2:
        return None
    m = motion_frames.astype(np.int16)
    diffs = np.abs(np.diff(m, axis=0)).mean(axis=(1, 2))
    return float((diffs < max_diff).mean())


class QualityStage(Stage):
    name: ClassVar[str] = "quality"
    order: ClassVar[int] = 10
    reads: ClassVar[frozenset[str]] = frozenset({"frames", "motion_frames"})

    # Short side the sharpness is measured at.
    sharpness_size: int = Field(448, ge=16)
    crushed_level: int = Field(10, ge=0, le=255)
    blown_level: int = Field(245, ge=0, le=255)
    # Mean absolute difference (8-bit) below which two consecutive motion frames count as frozen.
    frozen_diff: float = Field(1.0, ge=0)
    # Thresholds applied in filter mode (None: no rule). Sharpness on the sample footage: crisp
    # 448-line shots 40-300, 144-line sources about 18, fast pans with motion blur 5-8, a Gaussian
    # blur of sigma 2 pixels about 2-6.
    min_sharpness: float | None = Field(5.0, ge=0)
    min_luma: float | None = Field(0.06, ge=0, le=1)
    max_luma: float | None = Field(0.94, ge=0, le=1)
    max_crushed_share: float | None = Field(None, ge=0, le=1)
    max_blown_share: float | None = Field(None, ge=0, le=1)
    max_border_share: float | None = Field(0.35, ge=0, le=1)
    max_frozen_share: float | None = Field(0.5, ge=0, le=1)
    batch_size: int = Field(16, ge=1)

    def outputs(self) -> list[pa.Field]:
        return [pa.field(c, pa.float64()) for c in COLUMNS]

    def filter_rules(self) -> list[str]:
        bounds = [
            ("sharpness", ">=", self.min_sharpness),
            ("luma_mean", ">=", self.min_luma),
            ("luma_mean", "<=", self.max_luma),
            ("crushed_share", "<=", self.max_crushed_share),
            ("blown_share", "<=", self.max_blown_share),
            ("border_share", "<=", self.max_border_share),
            ("frozen_share", "<=", self.max_frozen_share),
        ]
        return [f"{col} {op} {v}" for col, op, v in bounds if v is not None]

    def frame_scores(self, frames: np.ndarray) -> dict:
        gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
        h, w = gray.shape[1:]
        top, bottom, left, right = border_box(gray)
        pic = gray[:, top:bottom, left:right]
        ph, pw = pic.shape[1:]
        s = self.sharpness_size / min(ph, pw)
        size = (max(1, round(pw * s)), max(1, round(ph * s)))
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        sharp = [float(cv2.Laplacian(cv2.resize(p, size, interpolation=interp), cv2.CV_32F).var()) for p in pic]
        return {
            "sharpness": float(np.mean(sharp)),
            "luma_mean": float(pic.mean() / 255.0),
            "crushed_share": float((pic <= self.crushed_level).mean()),
            "blown_share": float((pic >= self.blown_level).mean()),
            "border_share": 1.0 - (ph * pw) / (h * w),
        }

    def process_batch(self, clips: list[dict]) -> list[dict]:
        for c in clips:
            frames = c.get("frames")
            scores = self.frame_scores(frames) if frames is not None and len(frames) else dict.fromkeys(COLUMNS[:5])
            c.update(scores)
            c["frozen_share"] = frozen_share(c.get("motion_frames"), self.frozen_diff)
        return clips
