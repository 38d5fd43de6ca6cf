"""Burned-in text (subtitles, captions, watermarks): `text_area_ratio` from OCR on a few frames.

Detection boxes alone are a poor signal: PP-OCR's detector also boxes foliage and fine textures and
its box area says little about overlays. A region counts as text only when it is
- line-shaped: a long side at least `min_aspect` times the short side, and the short side (the
  line height) at most `max_line_height` of the frame height;
- legible: the recogniser reads at least `min_chars` letters or digits with confidence at least
  `min_confidence` (overlays are drawn to be read; texture never reads as words);
- optionally persistent (`persistent_only`): it overlaps a text region in another sampled frame,
  as overlays stay put while the picture moves.
Shape is checked before recognition, so the recogniser only reads plausible lines.

`text_area_ratio` is the area of the union of the text boxes over the frame area, the max over
the sampled frames. The OCR runs at `ocr_size` on the long side (about 0.1-0.2 s a frame on one
CPU core here), so keep `frames_per_clip` small.
"""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np
import pyarrow as pa
from pydantic import Field

from curate.models import ModelRef, fetch
from curate.stage import Mode, Stage

OCR_PACKAGE = "rapidocr_onnxruntime"
OCR_MODELS = {
    "det": "ch_PP-OCRv4_det_infer.onnx",
    "rec": "ch_PP-OCRv4_rec_infer.onnx",
    "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
}


def box_sides(box: np.ndarray) -> tuple[float, float]:
    """(long, short) side lengths of a 4-point box."""
    w = max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[3] - box[2]))
    h = max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2]))
    return float(max(w, h)), float(min(w, h))


def _overlaps(a: np.ndarray, b: np.ndarray, share: float = 0.5) -> bool:
    """Whether two boxes' bounding rectangles overlap by `share` of the smaller one."""
    (ax0, ay0), (ax1, ay1) = a.min(0), a.max(0)
    (bx0, by0), (bx1, by1) = b.min(0), b.max(0)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    smaller = min((ax1 - ax0) * (ay1 - ay0), (bx1 - bx0) * (by1 - by0))
    return smaller > 0 and inter >= share * smaller


class TextOverlayStage(Stage):
    name: ClassVar[str] = "text"
    order: ClassVar[int] = 30
    reads: ClassVar[frozenset[str]] = frozenset({"frames"})

    mode: Mode = "filter"
    max_area_ratio: float | None = 0.02
    frames_per_clip: int = 2
    ocr_size: int = 640
    min_confidence: float = 0.5
    min_chars: int = 2
    min_aspect: float = 1.5
    max_line_height: float = 0.3
    persistent_only: bool = False
    # Local copies of the OCR models (default: the ones rapidocr-onnxruntime ships).
    det_weights: str | None = None
    rec_weights: str | None = None
    cls_weights: str | None = None
    batch_size: int = Field(8, ge=1)

    def outputs(self) -> list[pa.Field]:
        return [pa.field("text_area_ratio", pa.float64())]

    def models(self) -> list[ModelRef]:
        return [
            ModelRef(
                name=OCR_MODELS[part],
                stage=self.name,
                local_path=getattr(self, f"{part}_weights"),
                package=(OCR_PACKAGE, f"models/{OCR_MODELS[part]}"),
                key=f"{part}_weights",
                license="Apache-2.0",  # PaddleOCR's models, as the rapidocr-onnxruntime wheel declares
            )
            for part in ("det", "rec", "cls")
        ]

    def filter_rules(self) -> list[str]:
        return [] if self.max_area_ratio is None else [f"text_area_ratio <= {self.max_area_ratio}"]

    def setup(self) -> None:
        from rapidocr_onnxruntime import RapidOCR

        det, rec, cls = (fetch(r) for r in self.models())
        threads = max(1, int(self.num_cpus))
        self._ocr = RapidOCR(
            det_model_path=det,
            rec_model_path=rec,
            cls_model_path=cls,
            det_limit_side_len=self.ocr_size,
            det_limit_type="max",
            intra_op_num_threads=threads,
            inter_op_num_threads=1,
        )

    def text_boxes(self, rgb: np.ndarray) -> list[np.ndarray]:
        """Boxes of legible text lines in one frame, in that frame's pixel coordinates."""
        h, w = rgb.shape[:2]
        s = min(1.0, self.ocr_size / max(h, w))
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if s < 1.0:
            bgr = cv2.resize(bgr, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        found, _ = self._ocr(bgr, use_cls=False, use_rec=False)
        lines = []
        for b in found or []:
            box = np.asarray(b, np.float32)
            long, short = box_sides(box)
            if short > 0 and long >= self.min_aspect * short and short <= self.max_line_height * bgr.shape[0]:
                lines.append(box)
        if not lines:
            return []
        read, _ = self._ocr.text_rec(self._ocr.get_crop_img_list(bgr, lines))
        return [
            box / s
            for box, (text, conf) in zip(lines, read)
            if float(conf) >= self.min_confidence and sum(ch.isalnum() for ch in text) >= self.min_chars
        ]

    def area_ratio(self, frames: np.ndarray) -> float:
        h, w = frames.shape[1:3]
        n = min(self.frames_per_clip, len(frames))
        picked = np.unique(np.linspace(0, len(frames) - 1, n).round().astype(int))
        per_frame = [self.text_boxes(frames[i]) for i in picked]
        if self.persistent_only and len(per_frame) > 1:
            per_frame = [
                [b for b in boxes if any(_overlaps(b, o) for j, other in enumerate(per_frame) if j != i for o in other)]
                for i, boxes in enumerate(per_frame)
            ]
        ratios = [0.0]
        for boxes in per_frame:
            if boxes:
                mask = np.zeros((h, w), np.uint8)
                cv2.fillPoly(mask, [b.round().astype(np.int32) for b in boxes], 1)
                ratios.append(float(mask.mean()))
        return max(ratios)

    def process_batch(self, clips: list[dict]) -> list[dict]:
        for c in clips:
            frames = c.get("frames")
            c["text_area_ratio"] = self.area_ratio(frames) if frames is not None and len(frames) else None
        return clips
