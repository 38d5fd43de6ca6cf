"""Probe, the single decode pass, shot detection and clip shaping for one video.

One streaming pass over the decoded frames feeds the shot detector with small frames and keeps,
for the clips that pass will produce, a bounded set of sampled RGB frames and low-resolution
grayscale motion frames. Clips are finalised as soon as their extent is certain (a detected cut,
or a full `max_duration_s` window inside a long shot), so what is held never depends on the
video's length. Any failure makes the video an error record; the run goes on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import av
import cv2
import numpy as np

from curate.config import ClipsConfig, FramesConfig, PipelineConfig
from curate.record import clip_id_for, video_id_for
from curate.shots import Boundary, Detector, make_detector


class VideoError(Exception):
    """A readable reason why a file cannot be used."""


@dataclass
class VideoInfo:
    duration_s: float
    fps: float
    num_frames: int
    width: int  # as displayed, after rotation
    height: int
    codec: str
    rotation: int  # degrees, counter-clockwise, from the display matrix


def _open(path: str):
    try:
        container = av.open(path, metadata_errors="ignore")
    except av.error.InvalidDataError as e:
        raise VideoError(f"not a readable video file ({e.strerror or e})") from e
    except av.error.FFmpegError as e:
        raise VideoError(f"cannot open: {e}") from e
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        container.close()
        raise VideoError(f"no video stream (file holds {', '.join(kinds)})")
    return container


def _info(container, rotation: int = 0) -> VideoInfo:
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    else:
        duration = 0.0
    num_frames = stream.frames or (round(duration * fps) if fps else 0)
    w, h = stream.codec_context.width, stream.codec_context.height
    if rotation % 180:
        w, h = h, w
    return VideoInfo(duration, fps, int(num_frames), int(w), int(h), stream.codec_context.name, rotation)


def probe(path: str) -> VideoInfo:
    """Container metadata plus the rotation of the first frame (one frame decoded)."""
    with _open(path) as container:
        rotation = 0
        for frame in container.decode(video=0):
            rotation = int(frame.rotation or 0)
            break
        return _info(container, rotation)


def _plane(frame, i: int) -> np.ndarray:
    p = frame.planes[i]
    return np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width]


_FAST_FORMATS = {"yuv420p", "yuvj420p"}


def _shrink(plane: np.ndarray, w: int, h: int) -> np.ndarray:
    """Downscale with little aliasing at a fraction of INTER_AREA's cost (slow on ratios that are not
    whole numbers, and on large ones): where more than 4x too large, one bilinear jump to 2x or 4x
    the target (a 2-4x jump up to 16x, larger beyond: each halving costs a pass), then halvings
    (bilinear at exactly 2x is a 2x2 average), then a last bilinear step under 2x."""
    ratio = min(plane.shape[1] / w, plane.shape[0] / h)
    if ratio > 4:
        k = 2 if ratio <= 8 else 4
        plane = cv2.resize(plane, (k * w, k * h), interpolation=cv2.INTER_LINEAR)
    while plane.shape[1] >= 2 * w and plane.shape[0] >= 2 * h:
        plane = cv2.resize(plane, (plane.shape[1] // 2, plane.shape[0] // 2), interpolation=cv2.INTER_LINEAR)
    if plane.shape[:2] == (h, w):
        return plane
    return cv2.resize(plane, (w, h), interpolation=cv2.INTER_LINEAR)


def _color(frame, w: int, h: int, rgb: bool) -> np.ndarray:
    """A resized BGR/RGB frame. For 8-bit 4:2:0 the planes are resized with OpenCV and converted at the
    small size (about free next to decoding); swscale's full conversion would halve the decode rate."""
    if frame.format.name in _FAST_FORMATS:
        y = _shrink(_plane(frame, 0), w, h)
        u = _shrink(_plane(frame, 1), w // 2, h // 2)
        v = _shrink(_plane(frame, 2), w // 2, h // 2)
        i420 = np.concatenate([y.ravel(), u.ravel(), v.ravel()]).reshape(h * 3 // 2, w)
        return cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420 if rgb else cv2.COLOR_YUV2BGR_I420)
    return frame.to_ndarray(format="rgb24" if rgb else "bgr24", width=w, height=h)


def detect_size(frame, width: int) -> tuple[int, int]:
    """The detector's frame size: `width` wide, aspect kept, even height."""
    return width, max(2, round(width * frame.height / frame.width / 2) * 2)


def detector_input(detector: Detector, frame, size: tuple[int, int]) -> np.ndarray | None:
    """What a detector is fed for one decoded frame (split and eval-shots feed it the same way)."""
    if detector.input_kind == "bgr":
        return _color(frame, *(detector.input_size or size), rgb=False)
    if detector.input_kind == "rgb":  # TransNetV2: swscale's scaling, as its reference pipeline (FFmpeg) does
        return frame.to_ndarray(format="rgb24", width=detector.input_size[0], height=detector.input_size[1])
    return None


def _small_gray(frame, w: int, h: int) -> np.ndarray:
    if frame.format.name in _FAST_FORMATS:
        return _shrink(_plane(frame, 0), w, h)
    return frame.to_ndarray(format="gray", width=w, height=h)


def _rotate(a: np.ndarray, rotation: int) -> np.ndarray:
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(a, k)) if k else a


def _scaled(w: int, h: int, short: int) -> tuple[int, int]:
    """Size with the given short side (never upscaled), both sides even."""
    s = min(1.0, short / min(w, h))
    return max(2, round(w * s / 2) * 2), max(2, round(h * s / 2) * 2)


@dataclass
class FrameBuffer:
    """Frames kept at a cadence of `every` source frames, thinned (cadence doubled) when over
    `capacity`, so a long shot never holds more than `capacity` frames."""

    every: int
    capacity: int
    base_every: int = 0
    items: list[tuple[int, np.ndarray]] = field(default_factory=list)

    def __post_init__(self):
        self.base_every = self.every

    def wants(self, index: int) -> bool:
        return index % self.every == 0

    def add(self, index: int, frame: np.ndarray) -> None:
        self.items.append((index, frame))
        if len(self.items) > self.capacity:
            self.every *= 2
            self.items = [(i, f) for i, f in self.items if i % self.every == 0]

    def prune(self, before: int) -> None:
        """Drop frames before `before` (called every frame: costs nothing when there is nothing to drop)."""
        k = 0
        while k < len(self.items) and self.items[k][0] < before:
            k += 1
        if k:
            del self.items[:k]
            if not self.items:
                self.every = self.base_every

    def between(self, start: int, end: int) -> list[tuple[int, np.ndarray]]:
        return [(i, f) for i, f in self.items if start <= i < end]


def pick_evenly(items: list[tuple[int, np.ndarray]], start: int, end: int, k: int) -> list[tuple[int, np.ndarray]]:
    """Up to k distinct frames nearest to the centres of k equal parts of [start, end)."""
    if len(items) <= k:
        return items
    chosen: list[int] = []
    idx = np.array([i for i, _ in items])
    for j in range(k):
        target = start + (j + 0.5) * (end - start) / k
        order = np.argsort(np.abs(idx - target), kind="stable")
        pick = next(int(o) for o in order if int(o) not in chosen)
        chosen.append(pick)
    return [items[c] for c in sorted(chosen)]


class ClipShaper:
    """Turns shot boundaries into clip windows online: trim each shot's edges, split shots longer than
    `max_duration_s` into consecutive windows, drop what is shorter than `min_duration_s`. Windows are
    emitted exactly as an offline pass over the final shot list would emit them."""

    def __init__(self, fps: float, cfg: ClipsConfig):
        self.min_len = max(1, math.ceil(cfg.min_duration_s * fps - 1e-6))
        self.max_len = math.floor(cfg.max_duration_s * fps + 1e-6) if cfg.max_duration_s else None
        self.trim = round(cfg.trim_s * fps)
        self.scene_start = 0
        self.next_start = self.trim
        self.scenes: list[list[int]] = []

    def _windows(self, end: int) -> list[tuple[int, int]]:
        out, a = [], self.next_start
        while self.max_len and end - a > self.max_len:
            out.append((a, a + self.max_len))
            a += self.max_len
        if end - a >= self.min_len:
            out.append((a, end))
        return out

    def boundary(self, b: Boundary, num_frames: int | None = None) -> list[tuple[int, int]]:
        out = self._windows(b.end - self.trim) if b.end > self.scene_start else []
        if b.end > self.scene_start:
            self.scenes.append([self.scene_start, b.end])
        self.scene_start = b.start
        self.next_start = b.start + self.trim
        return out

    def advance(self, safe_upto: int) -> list[tuple[int, int]]:
        """Emit full windows of the open shot that end before any boundary can still be reported."""
        out = []
        while self.max_len and self.next_start + self.max_len + self.trim <= safe_upto:
            out.append((self.next_start, self.next_start + self.max_len))
            self.next_start += self.max_len
        return out

    def finish(self, num_frames: int) -> list[tuple[int, int]]:
        if num_frames <= self.scene_start:
            return []
        return self.boundary(Boundary(num_frames, num_frames))


def _clip_record(video_id, uri, info: VideoInfo, s, e, frames_buf, motion_buf, fcfg: FramesConfig) -> dict:
    fps = info.fps
    picked = pick_evenly(frames_buf.between(s, e), s, e, fcfg.count)
    motion = motion_buf.between(s, e)
    return {
        "clip_id": clip_id_for(video_id, s, e),
        "video_id": video_id,
        "source_uri": uri,
        "path": uri,
        "start_s": s / fps,
        "end_s": e / fps,
        "start_frame": s,
        "end_frame": e,
        "num_frames": e - s,
        "fps": fps,
        "width": info.width,
        "height": info.height,
        "aspect_ratio": info.width / info.height,
        "duration_s": (e - s) / fps,
        "kept": True,
        "filter_reasons": [],
        "frames": np.stack([f for _, f in picked]) if picked else None,
        "frame_indices": [i for i, _ in picked],
        "motion_frames": np.stack([f for _, f in motion]) if motion else None,
        "motion_frame_indices": [i for i, _ in motion],
    }


def video_record(
    video_id: str, uri: str, info: VideoInfo | None, error: str | None, scenes, num_clips: int, emitted: int = 0
) -> dict:
    """The one video-only record a video ends with. `emitted_clips` tells the writer how many clip
    records to wait for; when `error` is set, those clips are discarded and `num_clips` is 0."""
    v = {
        "video_id": video_id,
        "source_uri": uri,
        "status": "error" if error else "ok",
        "error": error,
        "scenes": scenes,
        "num_clips": num_clips,
    }
    if info is not None:
        v.update(
            duration_s=info.duration_s, fps=info.fps, num_frames=info.num_frames, width=info.width,
            height=info.height, codec=info.codec, rotation=info.rotation,
        )
    return {"clip_id": None, "video_id": video_id, "source_uri": uri, "video": v, "emitted_clips": emitted}


@dataclass
class _PassState:
    info: VideoInfo | None = None
    shaper: ClipShaper | None = None
    emitted: int = 0


def split_video(
    uri: str, local_path: str, cfg: PipelineConfig, transnet_weights: str | None = None
) -> Iterator[dict]:
    """Yield clip records as soon as they are finalised, then exactly one video-only record.

    Clips stream out during decoding so memory stays flat however long the video. If decoding
    fails midway, the closing record says so and the writer drops the clips already sent: a
    manifest never holds half a video.
    """
    video_id = video_id_for(uri)
    state = _PassState()
    error = None
    try:
        for clip in _decode_pass(local_path, cfg, transnet_weights, state, video_id, uri):
            state.emitted += 1
            yield clip
    except VideoError as e:
        error = str(e)
    except av.error.FFmpegError as e:
        error = f"decode failed: {e}"
    except (MemoryError, ValueError, RuntimeError, OSError) as e:
        error = f"{type(e).__name__}: {e}"
    if error:
        yield video_record(video_id, uri, state.info, error, [], 0, state.emitted)
        return
    yield video_record(video_id, uri, state.info, None, state.shaper.scenes, state.emitted, state.emitted)


def _decode_pass(path, cfg: PipelineConfig, transnet_weights, state: _PassState, video_id: str, uri: str):
    if os.path.getsize(path) == 0:
        raise VideoError("empty file (0 bytes)")
    fcfg, scfg = cfg.frames, cfg.shots
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if fcfg.decode_threads:
            stream.codec_context.thread_count = fcfg.decode_threads
        info = state.info = _info(container)
        if info.fps <= 0:
            raise VideoError("no frame rate in the container")
        detector: Detector = make_detector(scfg, info.fps, transnet_weights)
        shaper = state.shaper = ClipShaper(info.fps, cfg.clips)

        sample_fps = min(info.fps, max(2.0, fcfg.count / max(cfg.clips.min_duration_s, 0.5)))
        frames_buf = FrameBuffer(every=max(1, round(info.fps / sample_fps)), capacity=max(48, 4 * fcfg.count))
        motion_buf = FrameBuffer(every=max(1, round(info.fps / fcfg.motion_fps)), capacity=512)

        def records(windows):
            return [_clip_record(video_id, uri, info, s, e, frames_buf, motion_buf, fcfg) for s, e in windows]

        index = 0
        rotation = 0
        sizes = None
        for frame in container.decode(stream):
            if index == 0:
                rotation = int(frame.rotation or 0)
                info = state.info = _info(container, rotation)
                fw, fh = frame.width, frame.height
                sizes = {
                    "detect": detect_size(frame, scfg.detect_width),
                    "sample": _scaled(fw, fh, fcfg.size),
                    "motion": _scaled(fw, fh, fcfg.motion_size),
                }
            for b in detector.push(index, detector_input(detector, frame, sizes["detect"])):
                yield from records(shaper.boundary(b))
                frames_buf.prune(shaper.next_start)
                motion_buf.prune(shaper.next_start)
            if frames_buf.wants(index):
                frames_buf.add(index, _rotate(_color(frame, *sizes["sample"], rgb=True), rotation))
            if motion_buf.wants(index):
                motion_buf.add(index, _rotate(_small_gray(frame, *sizes["motion"]), rotation))
            yield from records(shaper.advance(index - detector.latency))
            frames_buf.prune(shaper.next_start)
            motion_buf.prune(shaper.next_start)
            index += 1

        if index == 0:
            raise VideoError("no decodable frames")
        if index == 1:
            raise VideoError("only one frame: a still image, not a video")
        expected = stream.frames
        if expected and index < 0.9 * expected - 2:
            raise VideoError(f"truncated: decoded {index} of {expected} frames the container declares")
        info.num_frames = index  # what was decoded, not what the container declared
        for b in detector.finish(index):
            yield from records(shaper.boundary(b))
        yield from records(shaper.finish(index))
