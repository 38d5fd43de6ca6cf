"""Text in the picture, told apart by how it moves: burned-in overlays (`text_area_ratio`) and scene
text (`scene_text_area_ratio`).

Overlays (subtitles, titles, captions, watermarks, lower thirds) are drawn onto the picture after it
was shot, so they stay put in screen space while the picture moves; scene text (signs, plates,
shirts) was shot with the picture and moves with it. Only overlays are filtered by default.

Text is found with PP-OCR (the v4 detector and recogniser ONNX models that PyPI
`rapidocr-onnxruntime` ships), in two ways whose results are joined:
- scan: the detector reads `frames_per_clip` frames shrunk to `ocr_size` on the long side (about
  20 ms of one core a frame at 448). This is the stage's main cost: two frames at 640, the settings
  before, cost 85-95 ms a clip (bench/README.md, "Scoring stages");
- static structure: pixels that are edges in every sampled frame and keep their grey level within
  `STILL_LEVELS` across them, while the picture around them changes, are where a persistent
  overlay can be. Line-shaped groups of them too small for the scan are cropped from the frame at
  its full size and the detector reads only those crops: it finds a small or half-transparent
  watermark that the shrunk scan misses, for a few milliseconds a clip. On a still picture this
  says nothing (everything stays put), so there only the scan looks.
A detected box counts as text only when it is line-shaped (its long side at least `min_aspect`
times the short side, which is at most `max_line_height` of the frame height) and legible (the
recogniser reads at least `min_chars` letters or digits with confidence at least
`min_confidence`): PP-OCR's detector alone also boxes foliage and fine textures.

Overlay or scene text: every legible line is compared (normalised cross-correlation of its grey
levels, at zero shift) with the same place in the nearest frame before it and the nearest after it
that are at least `MIN_GAP_S` away, taken from the clip's sampled frames and its motion frames
(about 2 a second at 128 px). At or above `still_correlation` against either, it stayed put: an
overlay. Below against every neighbour that could be compared, it moved or went: scene text. With
no neighbour to compare (a one-frame clip, a box under `MIN_COMPARE_PX` at the neighbours' size) it
counts as an overlay, the conservative side for a filter. A static camera filming a static sign is
the case this cannot tell apart: the sign stays put like an overlay and is counted as one
(bench/README.md, "Scoring sanity (AUC)", has the figures).

Both columns are the area of the union of the boxes of their kind over the frame area, the largest
over the scanned frames.
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
OCR_MODELS = {"det": "ch_PP-OCRv4_det_infer.onnx", "rec": "ch_PP-OCRv4_rec_infer.onnx"}
# The detector takes sides that are multiples of 32 pixels, and misses text that touches its
# image's edge: a crop gets a plain border this wide (as RapidOCR letterboxes small images).
DET_STRIDE = 32
# Static structure (tuned on bench/scoring_auc.py's corpus): edges are a morphological gradient of
# at least MIN_EDGE grey levels; a half-transparent overlay over moving footage varies by up to
# STILL_LEVELS; the characters of a line are joined by closing gaps up to LINE_KERNEL (h, w).
MIN_EDGE = 48
STILL_LEVELS = 64
LINE_KERNEL = np.ones((3, 9), np.uint8)
# A static region is a text line candidate from this height up to STATIC_MAX_LINE_PX at the scan's
# scale (taller lines are the scan's), and at least STATIC_ASPECT times as wide as tall.
STATIC_MIN_LINE_PX = 6
STATIC_MAX_LINE_PX = 24
STATIC_ASPECT = 2.5
# ... and only where at least MOVING_SHARE of the pixels within one line height around it changed by
# more than MOVED_LEVELS across the sampled frames (the picture moves around it).
MOVED_LEVELS = 12
MOVING_SHARE = 0.25
# Neighbours closer in time than MIN_GAP_S say little about motion; a box smaller than
# MIN_COMPARE_PX at a neighbour's size cannot be compared there.
MIN_GAP_S = 0.2
MIN_COMPARE_PX = 4


def box_sides(box: np.ndarray) -> tuple[float, float]:
    """(long, short) side lengths of a 4-point box."""
    w = max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[3] - box[2]))
    h = max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2]))
    return float(max(w, h)), float(min(w, h))


def static_regions(gray: np.ndarray) -> np.ndarray:
    """Connected regions (N x 4: x, y, w, h) of pixels that are edges in every frame of `gray`
    (K x H x W uint8, K >= 2) and whose grey level varies by at most STILL_LEVELS across them,
    after closing the gaps between characters."""
    kernel = np.ones((3, 3), np.uint8)
    edges = np.min([cv2.morphologyEx(g, cv2.MORPH_GRADIENT, kernel) for g in gray], axis=0) >= MIN_EDGE
    still = (gray.max(0) - gray.min(0)) <= STILL_LEVELS
    mask = cv2.morphologyEx((edges & still).astype(np.uint8), cv2.MORPH_CLOSE, LINE_KERNEL)
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return stats[1:, :4]


def correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Normalised cross-correlation of two patches of one shape; None when either is flat."""
    a = a.astype(np.float32) - a.mean()
    b = b.astype(np.float32) - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / den if den > 0 else None


def line_crop(img: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The 4-point box (clockwise from top-left) of `img` warped to an upright rectangle, as
    PaddleOCR crops a line for its recogniser (a box taller than wide is turned on its side)."""
    w = int(max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[2] - box[3])))
    h = int(max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2])))
    target = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    crop = cv2.warpPerspective(
        img, cv2.getPerspectiveTransform(box.astype(np.float32), target), (max(w, 1), max(h, 1)),
        borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC,
    )
    return np.rot90(crop) if h >= 1.5 * w else crop


class TextOverlayStage(Stage):
    name: ClassVar[str] = "text"
    order: ClassVar[int] = 30
    reads: ClassVar[frozenset[str]] = frozenset({"frames", "motion_frames"})

    mode: Mode = "filter"
    max_area_ratio: float | None = Field(0.02, ge=0, le=1)
    # Scene text is recorded; a value here filters on it too.
    max_scene_area_ratio: float | None = Field(None, ge=0, le=1)
    frames_per_clip: int = Field(1, ge=1)
    ocr_size: int = Field(448, ge=DET_STRIDE)
    min_confidence: float = Field(0.5, ge=0, le=1)
    min_chars: int = Field(2, ge=1)
    min_aspect: float = Field(1.5, gt=0)
    max_line_height: float = Field(0.3, gt=0, le=1)
    still_correlation: float = Field(0.6, ge=-1, le=1)
    # Local copies of the OCR models (default: the ones rapidocr-onnxruntime ships).
    det_weights: str | None = None
    rec_weights: str | None = None
    batch_size: int = Field(8, ge=1)

    def outputs(self) -> list[pa.Field]:
        return [pa.field("text_area_ratio", pa.float64()), pa.field("scene_text_area_ratio", pa.float64())]

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
            for part in ("det", "rec")
        ]

    def filter_rules(self) -> list[str]:
        rules = [] if self.max_area_ratio is None else [f"text_area_ratio <= {self.max_area_ratio}"]
        if self.max_scene_area_ratio is not None:
            rules.append(f"scene_text_area_ratio <= {self.max_scene_area_ratio}")
        return rules

    def setup(self) -> None:
        import onnxruntime as ort
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess
        from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer
        from rapidocr_onnxruntime.main import DEFAULT_CFG_PATH
        from rapidocr_onnxruntime.utils import read_yaml

        det, rec = (fetch(r) for r in self.models())
        # As many intra-op threads as CPUs Ray gave this worker: more would fight the decode tasks.
        threads = max(1, int(self.num_cpus))
        cfg = read_yaml(DEFAULT_CFG_PATH)  # RapidOCR's own settings for PP-OCR's post-processing
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self._det = ort.InferenceSession(det, opts, providers=["CPUExecutionProvider"])
        self._db = DBPostProcess(**{k: cfg["Det"][k] for k in ("thresh", "box_thresh", "max_candidates", "unclip_ratio", "use_dilation", "score_mode")})
        self._rec = TextRecognizer({**cfg["Rec"], "model_path": rec, "intra_op_num_threads": threads, "inter_op_num_threads": 1})

    # ------------------------------------------------------------------ finding text

    def _lines(self, bgr: np.ndarray) -> list[np.ndarray]:
        """Line-shaped detector boxes (4 x 2, `bgr`'s pixel coordinates) in a BGR image."""
        h, w = bgr.shape[:2]
        size = (max(DET_STRIDE, round(w / DET_STRIDE) * DET_STRIDE), max(DET_STRIDE, round(h / DET_STRIDE) * DET_STRIDE))
        # PP-OCR's detector input: BGR scaled to [-1, 1] (RapidOCR's mean and std of 0.5).
        blob = cv2.dnn.blobFromImage(bgr, 1 / 127.5, size, (127.5, 127.5, 127.5))
        boxes, _ = self._db(self._det.run(None, {self._det.get_inputs()[0].name: blob})[0], (h, w))
        lines = []
        for box in np.asarray(boxes, np.float32):
            long, short = box_sides(box)
            if short > 3 and long >= self.min_aspect * short and short <= self.max_line_height * h:
                lines.append(box)
        return lines

    def _legible(self, bgr: np.ndarray, boxes: list[np.ndarray]) -> list[np.ndarray]:
        """The boxes (in `bgr`'s coordinates) whose text the recogniser reads."""
        if not boxes:
            return []
        read, _ = self._rec([line_crop(bgr, b) for b in boxes])
        return [
            box
            for box, (text, conf) in zip(boxes, read)
            if float(conf) >= self.min_confidence and sum(ch.isalnum() for ch in text) >= self.min_chars
        ]

    def scan(self, bgr: np.ndarray) -> list[np.ndarray]:
        """Legible text lines in one frame, found at `ocr_size` and read at the frame's size."""
        h, w = bgr.shape[:2]
        s = min(1.0, self.ocr_size / max(h, w))
        small = cv2.resize(bgr, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA) if s < 1.0 else bgr
        return self._legible(bgr, [b / s for b in self._lines(small)])

    def static_text(self, bgr: np.ndarray, gray: np.ndarray) -> list[np.ndarray]:
        """Legible text lines in line-shaped static structure too small for the scan (see
        `static_regions`; `gray` holds every sampled frame), read on crops of `bgr` at full size."""
        h, w = gray.shape[1:]
        tallest = STATIC_MAX_LINE_PX * max(1.0, max(h, w) / self.ocr_size)
        changed = (gray.max(0) - gray.min(0)) > MOVED_LEVELS
        crops = np.zeros((h, w), np.uint8)
        regions = static_regions(gray)
        widths, heights = regions[:, 2], regions[:, 3]
        # Line-shaped ones only (a textured picture has hundreds of regions: sorted out in one go).
        line = (heights >= STATIC_MIN_LINE_PX) & (heights <= min(tallest, self.max_line_height * h)) & (widths >= STATIC_ASPECT * heights)
        for x, y, bw, bh in regions[line].tolist():
            # Only where the picture around it moves: on a still picture this is no sign of an overlay.
            around = changed[max(0, y - bh) : y + 2 * bh, max(0, x - bh) : x + bw + bh]
            if around.sum() - changed[y : y + bh, x : x + bw].sum() < MOVING_SHARE * (around.size - bw * bh):
                continue
            pad = max(bh // 2, 4)
            cv2.rectangle(crops, (x - pad, y - pad), (x + bw + pad, y + bh + pad), 1, -1)
        _, _, stats, _ = cv2.connectedComponentsWithStats(crops, connectivity=8)
        lines: list[np.ndarray] = []
        for x, y, bw, bh, _ in stats[1:]:
            framed = _framed(bgr[y : y + bh, x : x + bw], DET_STRIDE)
            lines += [b + np.float32([x - DET_STRIDE, y - DET_STRIDE]) for b in self._lines(framed)]
        return self._legible(bgr, lines)

    # ------------------------------------------------------------------ overlay or scene

    @staticmethod
    def neighbours(t: float, clip: dict, gray: np.ndarray, times: list[float]) -> tuple[list, list]:
        """(before, after): the clip's grey frames at least MIN_GAP_S from presentation time `t`,
        nearest first: its sampled frames (`gray`, at `times`) and its motion frames."""
        frames = list(zip(times, gray))
        if clip.get("motion_frames") is not None:
            frames += list(zip(clip.get("motion_frame_times") or [], clip["motion_frames"]))
        before = sorted((f for f in frames if f[0] <= t - MIN_GAP_S + 1e-6), key=lambda f: -f[0])
        after = sorted((f for f in frames if f[0] >= t + MIN_GAP_S - 1e-6), key=lambda f: f[0])
        return [g for _, g in before], [g for _, g in after]

    def stayed_put(self, box: np.ndarray, gray: np.ndarray, others: list[np.ndarray]) -> bool | None:
        """Whether the box's grey levels in `gray` (H x W) correlate at zero shift with the same
        place in the first of `others` (grey frames of any size, same aspect) where they can be
        compared; None where none can."""
        h, w = gray.shape
        for other in others:
            oh, ow = other.shape
            (x0, y0), (x1, y1) = box.min(0) * (ow / w, oh / h), box.max(0) * (ow / w, oh / h)
            x0, y0, x1, y1 = max(0, int(x0)), max(0, int(y0)), min(ow, int(np.ceil(x1))), min(oh, int(np.ceil(y1)))
            if min(x1 - x0, y1 - y0) < MIN_COMPARE_PX:
                continue
            mine = gray if (oh, ow) == (h, w) else cv2.resize(gray, (ow, oh), interpolation=cv2.INTER_AREA)
            r = correlation(mine[y0:y1, x0:x1], other[y0:y1, x0:x1])
            if r is not None:
                return r >= self.still_correlation
        return None

    # ------------------------------------------------------------------ scores

    def area_ratios(self, clip: dict) -> tuple[float, float]:
        """(overlay, scene) text area ratios of one clip record: `frames` (K x H x W x 3 RGB) at
        `frame_times`, `motion_frames` (M x h x w grey) at `motion_frame_times` (presentation times, s)."""
        frames = clip["frames"]
        count, h, w = frames.shape[:3]
        gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
        times = list(clip.get("frame_times") or [])
        if len(times) != count:  # no times: a frame every MIN_GAP_S, so neighbours still count
            times = [i * MIN_GAP_S for i in range(count)]
        n = min(self.frames_per_clip, count)
        # The centres of n equal parts of the sampled frames (the middle one for n = 1).
        picked = ((np.arange(n) + 0.5) * count / n - 0.5).round().astype(int)
        overlay_best = scene_best = 0.0
        for i, k in enumerate(picked):
            bgr = np.ascontiguousarray(frames[k][:, :, ::-1])
            # Static structure is the same in every frame: read once.
            static = self.static_text(bgr, gray) if i == 0 and count > 1 else []
            found = static + self.scan(bgr)  # a line both find is one area in the union below
            before, after = self.neighbours(times[k], clip, gray, times)
            overlay, scene = [], []
            for box in found:
                verdicts = [self.stayed_put(box, gray[k], side) for side in (before, after)]
                moved = not any(verdicts) and any(v is not None for v in verdicts)
                (scene if moved else overlay).append(box)
            overlay_best = max(overlay_best, _union_share(overlay, h, w))
            scene_best = max(scene_best, _union_share(scene, h, w))
        return overlay_best, scene_best

    def process_batch(self, clips: list[dict]) -> list[dict]:
        for c in clips:
            frames = c.get("frames")
            if frames is None or not len(frames):
                c["text_area_ratio"] = c["scene_text_area_ratio"] = None
            else:
                c["text_area_ratio"], c["scene_text_area_ratio"] = self.area_ratios(c)
        return clips


def _framed(img: np.ndarray, border: int) -> np.ndarray:
    """`img` in a plain border of its mean colour: the detector misses text at an image's edge."""
    return cv2.copyMakeBorder(img, *[border] * 4, cv2.BORDER_CONSTANT, value=img.reshape(-1, 3).mean(0).tolist())


def _union_share(boxes: list[np.ndarray], h: int, w: int) -> float:
    if not boxes:
        return 0.0
    mask = np.zeros((h, w), np.uint8)
    for b in boxes:  # one at a time: fillPoly given several fills where an odd number overlap
        cv2.fillConvexPoly(mask, b.round().astype(np.int32), 1)
    return float(mask.mean())
