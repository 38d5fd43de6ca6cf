"""The single decode pass for one video: presentation times, shot detection, clip shaping, sampled frames.

One streaming pass over the movie stream's decoded frames records each frame's presentation time
(PTS), feeds the shot detector with small frames and keeps, for the clips that pass will produce, a
bounded set of sampled RGB frames and low-resolution grayscale motion frames, upright and with
square pixels (`curate.video`), each kind only when a stage of the run reads it. Clips are
finalised as soon as their extent is certain (a detected cut, or a full `max_duration_s` window
inside a long shot), so what is held never depends on the video's length. Any failure makes the
video an error record; the run goes on.

A long video is decoded in segments that start at keyframes (`decode_segment`, run in parallel by
the engine) whose frames then go through the same detection, shaping and sampling in order, with
the same results as one pass.

Times are presentation times in seconds from the video stream's first frame (`pts_offset_s` is
that frame's PTS in the file's own timeline), so they are exact on variable-frame-rate footage.
Frame numbers are decode-order indices of the presented frames from 0 (frames an edit list hides
are not counted). Metadata is checked against what decodes: a file whose frames end well before
its declared duration is "truncated".
"""

from __future__ import annotations

import math
import os
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import chain, islice

import av
import numpy as np

from curate.config import ClipsConfig, FramesConfig, PipelineConfig
from curate.record import SAMPLED_FRAMES, clip_id_for, video_id_for
from curate.shots import Boundary, Detector, make_detector
from curate.video import Geometry, VideoError, geometry, open_video, swscale, to_luma, to_rgb, upright

# Slack when comparing presentation times (s): far below any frame interval, far above float noise.
EPS = 1e-6


@dataclass
class VideoInfo:
    """What the decode pass measured (before it ends: what the container declares)."""

    duration_s: float  # first frame's PTS to the end of the last frame
    fps: float  # average: frames / duration_s
    num_frames: int  # frames decoded
    width: int  # as displayed: SAR applied, rotated
    height: int
    aspect_ratio: float  # display aspect ratio, width / height as shown
    codec: str
    rotation: int  # degrees, counter-clockwise, from the display matrix
    sar: str = "1:1"  # sample aspect ratio as stored
    vfr: bool = False  # frame intervals vary (beyond timestamp rounding)
    pts_offset_s: float = 0.0  # PTS of the first frame in the file's own timeline
    stream_index: int = 0  # the movie stream's index in the file


def _declared_duration(container, stream) -> float | None:
    """The video stream's own declared duration (s), or the container's when the stream has none
    (Matroska, WebM, MPEG-TS); None when neither says."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _info(container, stream, geom: Geometry | None = None) -> VideoInfo:
    """Container metadata, before decoding (the pass replaces it with what it measured)."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    geom = geom or Geometry(stream.codec_context.width, stream.codec_context.height)
    return VideoInfo(
        duration_s=_declared_duration(container, stream) or 0.0,
        fps=float(rate) if rate else 0.0,
        num_frames=int(stream.frames or 0),
        width=geom.display_size[0],
        height=geom.display_size[1],
        aspect_ratio=geom.aspect_ratio,
        codec=stream.codec_context.name,
        rotation=geom.rotation,
        sar=f"{geom.sar.numerator}:{geom.sar.denominator}",
        stream_index=stream.index,
    )


def probe(path: str) -> VideoInfo:
    """Container metadata of the movie stream, with the geometry of its first frame (one frame decoded)."""
    container, stream = open_video(path)
    with container:
        for frame in container.decode(stream):
            return _info(container, stream, geometry(stream, frame))
        return _info(container, stream)


def detect_size(frame, width: int) -> tuple[int, int]:
    """The detector's frame size: `width` wide, aspect kept, even height."""
    return width, max(2, round(width * frame.height / frame.width / 2) * 2)


def detector_input(kind: str | None, input_size: tuple[int, int] | None, frame, size: tuple[int, int]) -> np.ndarray | None:
    """What a detector (its `input_kind` and `input_size`) is fed for one decoded frame; `size`: the
    detector's frame size when it names none (split and eval-shots feed it the same way)."""
    if kind == "bgr":
        return to_rgb(frame, *(input_size or size), bgr=True)
    if kind == "rgb":  # TransNetV2: swscale's scaling, as its reference pipeline (FFmpeg) does
        return swscale(frame, "rgb24", *input_size)
    return None


class Timeline:
    """Presentation times of the frames decoded so far (s, from the first frame), and the end of the
    last frame once the video is done. `time(n)` of the frame count is that end."""

    def __init__(self):
        self.times = array("d")
        self.end: float | None = None
        self.min_step = math.inf
        self.max_step = 0.0

    def __len__(self) -> int:
        return len(self.times)

    def add(self, t: float) -> None:
        if self.times:
            step = t - self.times[-1]
            self.min_step, self.max_step = min(self.min_step, step), max(self.max_step, step)
        self.times.append(t)

    def time(self, i: int) -> float:
        return self.times[i] if i < len(self.times) else self.end

    def first_at_or_after(self, t: float, lo: int, hi: int) -> int:
        """Smallest frame i in [lo, hi] with time(i) >= t (hi if none)."""
        return min(bisect_left(self.times, t - EPS, lo, min(hi, len(self.times))), hi)

    def last_at_or_before(self, t: float, lo: int, hi: int) -> int:
        """Largest frame i in [lo, hi] with time(i) <= t (lo if none); `hi` may be the frame count."""
        if hi >= len(self.times) and self.end is not None and self.end <= t + EPS:
            return hi
        return max(bisect_right(self.times, t + EPS, lo, min(hi + 1, len(self.times))) - 1, lo)

    @property
    def vfr(self) -> bool:
        """Intervals vary by more than 10% (plus 1 ms of timestamp rounding, e.g. Matroska's ms ticks)."""
        return self.max_step > 1.1 * self.min_step + 1e-3


class ClipShaper:
    """Turns shot boundaries into clip windows online, by presentation time: trim `trim_s` from each
    shot's edges, cut shots longer than `max_duration_s` into consecutive windows of at most that
    length, drop what is shorter than `min_duration_s`. Windows are frame ranges [start, end) and are
    emitted exactly as an offline pass over the final shot list would emit them."""

    def __init__(self, cfg: ClipsConfig, timeline: Timeline):
        self.min_s, self.max_s, self.trim_s = cfg.min_duration_s, cfg.max_duration_s, cfg.trim_s
        self.tl = timeline
        self.scene_start = 0
        self.next_start: int | None = None  # first frame of the open shot's next window (None: not known yet)
        self.scenes: list[list[int]] = []

    def _start(self) -> int | None:
        """The open shot's first frame after trimming, once that frame is decoded."""
        if self.next_start is None:
            t = self.tl.time(self.scene_start) + self.trim_s
            if self.tl.times and self.tl.times[-1] >= t - EPS:
                self.next_start = self.tl.first_at_or_after(t, self.scene_start, len(self.tl))
        return self.next_start

    def _window_end(self, a: int, limit: int) -> int:
        """The last frame w <= limit with time(w) <= time(a) + max_duration_s."""
        return self.tl.last_at_or_before(self.tl.time(a) + self.max_s, a, limit)

    def _windows(self, end: int) -> list[tuple[int, int]]:
        """Windows of the open shot ending at frame `end` (exclusive, trim not yet applied)."""
        a = self._start()
        if a is None:
            a = self.tl.first_at_or_after(self.tl.time(self.scene_start) + self.trim_s, self.scene_start, end)
        b = self.tl.last_at_or_before(self.tl.time(end) - self.trim_s, a, end)
        out = []
        while self.max_s and self.tl.time(b) - self.tl.time(a) > self.max_s + EPS:
            w = self._window_end(a, b)
            out.append((a, w))
            a = w
        if b > a and self.tl.time(b) - self.tl.time(a) >= self.min_s - EPS:
            out.append((a, b))
        return out

    def boundary(self, b: Boundary) -> list[tuple[int, int]]:
        """The shot before `b` ends at b.end; the next one starts at b.start. Both frames are decoded."""
        out = self._windows(b.end) if b.end > self.scene_start else []
        if b.end > self.scene_start:
            self.scenes.append([self.scene_start, b.end])
        self.scene_start, self.next_start = b.start, None
        return out

    def advance(self, safe_upto: int) -> list[tuple[int, int]]:
        """Emit full windows of the open shot that no boundary can change any more: no boundary ends
        before frame `safe_upto`, so the shot's trimmed end lies at or after time(safe_upto) - trim."""
        out = []
        if not self.max_s or not 0 <= safe_upto < len(self.tl) or self._start() is None:
            return out
        limit = self.tl.time(safe_upto) - self.trim_s
        while True:
            a = self.next_start
            w = self._window_end(a, len(self.tl) - 1)
            # The window is final once the frame after it is decoded and lies within the shot's trimmed end.
            if w + 1 >= len(self.tl) or self.tl.time(w + 1) > limit + EPS:
                return out
            out.append((a, w))
            self.next_start = w

    def finish(self, num_frames: int) -> list[tuple[int, int]]:
        if num_frames <= self.scene_start:
            return []
        return self.boundary(Boundary(num_frames, num_frames))


def grid_slot(t: float, interval_s: float) -> int:
    """Which slot of a sampling grid of `interval_s` (s) time `t` (s) falls in."""
    return math.floor(t / interval_s + 1e-6)


@dataclass
class FrameBuffer:
    """Frames kept on a grid of `interval_s` (the first frame at or after each grid time), thinned
    (grid spacing doubled) when over `capacity`, so a long shot never holds more than `capacity` frames.
    Items are (frame number, time, picture)."""

    interval_s: float
    capacity: int
    step: int = 1  # grid slots between kept frames
    last_slot: int = -1  # slot of the last frame offered to `wants`
    items: list[tuple[int, float, np.ndarray]] = field(default_factory=list)

    def slot(self, t: float) -> int:
        return grid_slot(t, self.interval_s)

    def wants(self, t: float) -> bool:
        """Whether to keep the frame at time `t`: the first frame of its slot on the grid. Every
        frame is offered, in presentation order, so which frames are kept depends only on their times
        and the thinning (a segmented decode keeps the first frame of each slot, the only ones asked for)."""
        k = self.slot(t)
        first, self.last_slot = k > self.last_slot, max(k, self.last_slot)
        return first and k % self.step == 0

    def add(self, index: int, t: float, frame: np.ndarray) -> None:
        self.items.append((index, t, frame))
        if len(self.items) > self.capacity:
            self.step *= 2
            self.items = [it for it in self.items if self.slot(it[1]) % self.step == 0]

    def prune(self, before: int) -> None:
        """Drop frames before frame `before` (called every frame: costs nothing when there is nothing to drop)."""
        k = 0
        while k < len(self.items) and self.items[k][0] < before:
            k += 1
        if k:
            del self.items[:k]
            if not self.items:
                self.step = 1

    def between(self, start: int, end: int) -> list[tuple[int, float, np.ndarray]]:
        return [it for it in self.items if start <= it[0] < end]


def pick_evenly(items: list[tuple[int, float, np.ndarray]], start_s: float, end_s: float, k: int):
    """Up to k distinct items nearest in time to the centres of k equal parts of [start_s, end_s)."""
    if len(items) <= k:
        return items
    chosen: list[int] = []
    ts = np.array([t for _, t, _ in items])
    for j in range(k):
        target = start_s + (j + 0.5) * (end_s - start_s) / k
        order = np.argsort(np.abs(ts - target), kind="stable")
        chosen.append(next(int(o) for o in order if int(o) not in chosen))
    return [items[c] for c in sorted(chosen)]


def _stack(items) -> tuple[np.ndarray | None, list[int], list[float]]:
    if not items:
        return None, [], []
    return np.stack([f for _, _, f in items]), [i for i, _, _ in items], [t for _, t, _ in items]


def _clip_record(video_id, uri, info: VideoInfo, tl: Timeline, s, e, frames_buf, motion_buf, fcfg: FramesConfig) -> dict:
    start_s, end_s = tl.time(s), tl.time(e)
    frames, frame_indices, frame_times = _stack(pick_evenly(frames_buf.between(s, e), start_s, end_s, fcfg.count))
    motion, motion_indices, motion_times = _stack(motion_buf.between(s, e))
    return {
        "clip_id": clip_id_for(video_id, s, e),
        "video_id": video_id,
        "source_uri": uri,
        "path": uri,
        "clip_uri": None,
        "start_s": start_s,
        "end_s": end_s,
        "start_frame": s,
        "end_frame": e,
        "num_frames": e - s,
        "fps": (e - s) / (end_s - start_s),
        "width": info.width,
        "height": info.height,
        "aspect_ratio": info.aspect_ratio,
        "duration_s": end_s - start_s,
        "pts_offset_s": info.pts_offset_s,
        "stream_index": info.stream_index,
        "kept": True,
        "filter_reasons": [],
        "errors": [],
        "frames": frames,
        "frame_indices": frame_indices,
        "frame_times": frame_times,
        "motion_frames": motion,
        "motion_frame_indices": motion_indices,
        "motion_frame_times": motion_times,
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
            height=info.height, aspect_ratio=info.aspect_ratio, sar=info.sar, codec=info.codec,
            rotation=info.rotation, vfr=info.vfr, pts_offset_s=info.pts_offset_s, stream_index=info.stream_index,
        )
    return {"clip_id": None, "video_id": video_id, "source_uri": uri, "video": v, "emitted_clips": emitted}


@dataclass
class _PassState:
    info: VideoInfo | None = None
    shaper: ClipShaper | None = None
    emitted: int = 0


def split_video(
    uri: str, local_path: str, cfg: PipelineConfig, transnet_weights: str | None = None, samples: frozenset[str] = SAMPLED_FRAMES,
    run_segments=None,
) -> Iterator[dict]:
    """Yield clip records as soon as they are finalised, then exactly one video-only record.
    `samples`: which of SAMPLED_FRAMES to keep (the others stay empty on the records: no stage reads them).

    A video at least two `frames.segment_s` long in a seekable container is decoded in segments
    that start at keyframes (`decode_segment`); `run_segments` maps the segments' arguments to their
    results, in order (default: one after another here; the engine runs them as parallel Ray tasks).
    The records are the same as a single pass's.

    Clips stream out during decoding so memory stays flat however long the video. If decoding
    fails midway, the closing record says so and the writer drops the clips already sent: a
    manifest never holds half a video.
    """
    video_id = video_id_for(uri)
    state = _PassState()
    error = None
    try:
        for clip in _decode_pass(local_path, cfg, transnet_weights, state, video_id, uri, samples, run_segments):
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


def _frames(container, stream, last_other: list[float]) -> Iterator:
    """Decoded frames of `stream`, demuxing every stream so that `last_other[0]` follows how far the
    file's audio reaches (s, the container's timeline): the evidence of a truncated file whose
    declared duration is the container's."""
    for packet in container.demux():
        if packet.stream.index == stream.index:
            yield from packet.decode()
        elif packet.stream.type == "audio" and packet.pts is not None and packet.time_base is not None:
            last_other[0] = max(last_other[0], float((packet.pts + (packet.duration or 0)) * packet.time_base))


def _duration_s(frame) -> float | None:
    """A frame's own duration (s), None when it has none."""
    if frame.duration and frame.duration > 0 and frame.time_base is not None:
        return float(frame.duration * frame.time_base)
    return None


@dataclass(frozen=True)
class FrameReader:
    """What the pass takes from each decoded frame, all sizes fixed by the video's first frame: the
    detector's input and, for the kinds some stage reads, a sampled RGB frame and a grey motion frame
    (upright, square pixels)."""

    geom: Geometry
    detect_size: tuple[int, int]
    detect_kind: str | None  # Detector.input_kind
    detect_input_size: tuple[int, int] | None  # Detector.input_size
    sample_size: tuple[int, int]
    motion_size: tuple[int, int]

    @classmethod
    def for_video(cls, stream, first_frame, fcfg: FramesConfig, scfg, detector: Detector) -> "FrameReader":
        geom = geometry(stream, first_frame)
        return cls(
            geom, detect_size(first_frame, scfg.detect_width), detector.input_kind, detector.input_size,
            geom.coded_size(geom.scaled(fcfg.size)), geom.coded_size(geom.scaled(fcfg.motion_size)),
        )

    def detector_input(self, frame) -> np.ndarray | None:
        return detector_input(self.detect_kind, self.detect_input_size, frame, self.detect_size)

    def rgb(self, frame) -> np.ndarray:
        return upright(to_rgb(frame, *self.sample_size), self.geom.rotation)

    def luma(self, frame) -> np.ndarray:
        return upright(to_luma(frame, *self.motion_size), self.geom.rotation)


class _Pass:
    """Everything the pass does with a decoded frame, in presentation order: its time, the shot
    detector, clip shaping, sampled frames, and the clip records that become final. Fed by the
    serial decode or, for a long video, by its segments' results (`decode_segment`), with the same
    values either way."""

    def __init__(self, cfg: PipelineConfig, info: VideoInfo, detector: Detector, state: _PassState, video_id: str, uri: str,
                 samples: frozenset[str], origin: float):
        fcfg = cfg.frames
        self.fcfg, self.info, self.detector, self.video_id, self.uri = fcfg, info, detector, video_id, uri
        self.tl = Timeline()
        self.shaper = state.shaper = ClipShaper(cfg.clips, self.tl)
        self.frames_buf = FrameBuffer(interval_s=1.0 / sample_fps(cfg), capacity=max(48, 4 * fcfg.count))
        self.motion_buf = FrameBuffer(interval_s=1.0 / fcfg.motion_fps, capacity=512)
        self.sample_rgb, self.sample_motion = "frames" in samples, "motion_frames" in samples
        self.index = 0
        self.origin = origin
        self.last: float | None = None
        self.step = 1.0 / info.fps  # nominal frame interval, for frames without a timestamp

    def _records(self, windows) -> list[dict]:
        return [
            _clip_record(self.video_id, self.uri, self.info, self.tl, s, e, self.frames_buf, self.motion_buf, self.fcfg)
            for s, e in windows
        ]

    def _prune(self) -> None:
        if self.shaper.next_start is not None:
            self.frames_buf.prune(self.shaper.next_start)
            self.motion_buf.prune(self.shaper.next_start)

    def add(self, t: float | None, duration: float | None, detect: np.ndarray | None, rgb, luma) -> list[dict]:
        """One frame: its PTS `t` (s, the file's timeline; None when missing), its own `duration`
        (s or None), the detector's input, and callables giving its sampled RGB and grey frames
        (called only for frames the buffers keep). Returns the clip records this frame makes final."""
        last, index = self.last, self.index
        if t is None or (last is not None and t <= last):  # no or non-increasing PTS: assume the nominal step
            t = self.step if last is None else last + self.step
        if index and duration is None:
            self.step = t - last
        self.last = t
        rel = t - self.origin
        self.tl.add(rel)
        out = []
        for b in self.detector.push(index, detect):
            out += self._records(self.shaper.boundary(b))
            self._prune()
        if self.sample_rgb and self.frames_buf.wants(rel):
            self.frames_buf.add(index, rel, rgb())
        if self.sample_motion and self.motion_buf.wants(rel):
            self.motion_buf.add(index, rel, luma())
        out += self._records(self.shaper.advance(index - self.detector.latency))
        self._prune()
        if duration is not None:
            self.step = duration
        self.index += 1
        return out

    def finish(self, container, stream, audio_end: float) -> list[dict]:
        """Check the decoded frames against the container's metadata (VideoError when truncated or
        not a video), update `info` with what was measured, and return the last clip records."""
        if self.index == 0:
            raise VideoError("no decodable frames")
        if self.index == 1:
            raise VideoError("only one frame: a still image, not a video")
        info, tl = self.info, self.tl
        tl.end = self.last + self.step - self.origin
        _check_complete(container, stream, info, tl, audio_end)
        info.num_frames = self.index  # what was decoded, not what the container declared
        info.duration_s = tl.end
        info.fps = self.index / tl.end
        info.vfr = tl.vfr
        out = []
        for b in self.detector.finish(self.index):
            out += self._records(self.shaper.boundary(b))
        return out + self._records(self.shaper.finish(self.index))


def sample_fps(cfg: PipelineConfig) -> float:
    """Rate of the grid sampled RGB frames are kept on: enough for `frames.count` in the shortest clip."""
    return max(2.0, cfg.frames.count / max(cfg.clips.min_duration_s, 0.5))


# Containers whose index gives keyframe positions to seek to (MP4/MOV, Matroska/WebM); others
# (MPEG-TS, AVI, raw streams) are decoded in one pass.
SEEKABLE_FORMATS = ("mov", "mp4", "matroska", "webm")


class SegmentUnsafe(Exception):
    """A segment met frames it cannot place on its own (no PTS, PTS going backwards): the video is
    decoded in one pass instead."""


@dataclass
class SegmentFrames:
    """What `decode_segment` returns: per frame of the segment, in presentation order, its PTS (s),
    own duration (s or None) and detector input; sampled RGB and grey frames for the frames that
    are the first of their slot on the sampling grids (the only ones the pass's buffers can keep)."""

    times: list[float] = field(default_factory=list)
    durations: list[float | None] = field(default_factory=list)
    detect: list[np.ndarray | None] = field(default_factory=list)
    rgb: dict[int, np.ndarray] = field(default_factory=dict)  # position in the segment -> frame
    luma: dict[int, np.ndarray] = field(default_factory=dict)
    audio_end: float = -math.inf


def decode_segment(path: str, decode_threads: int, reader: FrameReader, origin: float, grids: tuple[float | None, float | None],
                   start_pts: int | None, end_pts: int | None) -> SegmentFrames:
    """Decode the frames of the movie stream with start_pts <= PTS < end_pts (stream time base;
    None: the file's start, its end), seeking to `start_pts`, a keyframe. `grids`: the sampling
    intervals (s) of the RGB and grey frames, None for a kind no stage reads; `origin`: the first
    frame's PTS (s). Frames an open GOP decodes before the keyframe belong to the segment before,
    which decodes past its end until a frame reaches it. Raises SegmentUnsafe, VideoError,
    av.error.FFmpegError."""
    out = SegmentFrames()
    last_slot = [-1, -1]
    container, stream = open_video(path)
    with container:
        stream.thread_type = "AUTO"
        if decode_threads:
            stream.codec_context.thread_count = decode_threads
        if start_pts is not None:
            container.seek(start_pts, backward=True, any_frame=False, stream=stream)
        last_other = [-math.inf]
        for frame in _frames(container, stream, last_other):
            if frame.pts is None:
                raise SegmentUnsafe("a frame without a timestamp")
            if start_pts is not None and frame.pts < start_pts:
                continue
            if end_pts is not None and frame.pts >= end_pts:
                break
            t = float(frame.time)
            if out.times and t <= out.times[-1]:
                raise SegmentUnsafe("timestamps going backwards")
            k = len(out.times)
            out.times.append(t)
            out.durations.append(_duration_s(frame))
            out.detect.append(reader.detector_input(frame))
            for j, (grid, convert, kept) in enumerate(zip(grids, (reader.rgb, reader.luma), (out.rgb, out.luma))):
                if grid is not None:
                    slot = grid_slot(t - origin, grid)
                    if slot > last_slot[j] or k == 0:  # the first frame: its slot may have started before
                        kept[k] = convert(frame)
                    last_slot[j] = slot
        out.audio_end = last_other[0]
    return out


def segment_bounds(path: str, info: VideoInfo, first_pts: int, segment_s: float) -> list[int]:
    """PTS (stream time base) of the keyframes nearest before every `segment_s` of a video after its
    first frame: where its segments start. Empty when the video is shorter than two segments or
    its container has no index to seek by."""
    if not segment_s or info.duration_s < 2 * segment_s:
        return []
    container, stream = open_video(path)
    with container:
        if not any(f in SEEKABLE_FORMATS for f in container.format.name.split(",")) or stream.time_base is None:
            return []
        bounds: list[int] = []
        n = int(info.duration_s // segment_s)
        for k in range(1, n):
            target = first_pts + int(k * segment_s / stream.time_base)
            container.seek(target, backward=True, any_frame=False, stream=stream)
            packet = next((p for p in container.demux(stream) if p.pts is not None), None)
            if packet is None or not packet.is_keyframe:
                return []
            if packet.pts > (bounds[-1] if bounds else first_pts):
                bounds.append(packet.pts)
        return bounds


def _copy(frames: dict[int, np.ndarray], k: int) -> np.ndarray:
    """A segment's frame as an array of its own: a frame kept for a long shot must not hold on to
    the whole segment it came in (one object in Ray's object store)."""
    return frames[k].copy()


def _local_segments(specs):
    """Decode segments one after another in this process (the engine runs them as Ray tasks)."""
    return (decode_segment(*spec) for spec in specs)


def _decode_pass(path, cfg: PipelineConfig, transnet_weights, state: _PassState, video_id: str, uri: str, samples: frozenset[str],
                 run_segments=None):
    if os.path.getsize(path) == 0:
        raise VideoError("empty file (0 bytes)")
    fcfg, scfg = cfg.frames, cfg.shots
    container, stream = open_video(path)
    with container:
        stream.thread_type = "AUTO"
        if fcfg.decode_threads:
            stream.codec_context.thread_count = fcfg.decode_threads
        info = state.info = _info(container, stream)
        if info.fps <= 0:
            raise VideoError("no frame rate in the container")
        detector: Detector = make_detector(scfg, info.fps, transnet_weights)
        last_other = [-math.inf]
        frames = _frames(container, stream, last_other)
        first = next(frames, None)
        if first is None:
            raise VideoError("no decodable frames")
        reader = FrameReader.for_video(stream, first, fcfg, scfg, detector)
        origin = first.time if first.time is not None else 1.0 / info.fps
        info = state.info = _info(container, stream, reader.geom)
        info.pts_offset_s = origin
        bounds = segment_bounds(path, info, first.pts, fcfg.segment_s) if first.pts is not None else []
        if bounds:
            emitted = 0
            try:
                for rec in _segmented(path, cfg, container, stream, reader, detector, state, video_id, uri, samples, origin, bounds,
                                      run_segments or _local_segments):
                    emitted += 1
                    yield rec
                return
            except SegmentUnsafe:
                pass
            # Decoded in one pass from the start; the clips already sent are the same ones, not sent again.
            yield from islice(_decode_pass(path, cfg.model_copy(update={"frames": fcfg.model_copy(update={"segment_s": 0.0})}),
                                           transnet_weights, state, video_id, uri, samples), emitted, None)
            return
        p = _Pass(cfg, info, detector, state, video_id, uri, samples, origin)
        for frame in chain([first], frames):
            yield from p.add(frame.time, _duration_s(frame), reader.detector_input(frame),
                             partial(reader.rgb, frame), partial(reader.luma, frame))
        yield from p.finish(container, stream, last_other[0])


def _segmented(path, cfg: PipelineConfig, container, stream, reader: FrameReader, detector, state, video_id, uri, samples,
               origin: float, bounds: list[int], run_segments):
    """The pass over a long video from its segments' decodes (run in parallel by `run_segments`,
    results in order), with the values a single pass gives."""
    p = _Pass(cfg, state.info, detector, state, video_id, uri, samples, origin)
    grids = (p.frames_buf.interval_s if p.sample_rgb else None, p.motion_buf.interval_s if p.sample_motion else None)
    edges = [None, *bounds, None]
    # One decoder thread a segment unless set: a segment task holds one CPU, and frame threads cost
    # about a third more CPU for the same frames (bench/README.md, "Long videos in segments").
    threads = cfg.frames.decode_threads or 1
    specs = [(path, threads, reader, origin, grids, a, b) for a, b in zip(edges, edges[1:])]
    audio_end = -math.inf
    for seg in run_segments(specs):
        audio_end = max(audio_end, seg.audio_end)
        for k, t in enumerate(seg.times):
            yield from p.add(t, seg.durations[k], seg.detect[k], partial(_copy, seg.rgb, k), partial(_copy, seg.luma, k))
        del seg  # before the next one arrives: one segment's frames at a time
    yield from p.finish(container, stream, audio_end)


def _check_complete(container, stream, info: VideoInfo, tl: Timeline, audio_end: float) -> None:
    """Raise "truncated" when the decoded frames end well before the declared duration: the video
    stream's own (mp4, mov), else the container's (Matroska, WebM, MPEG-TS), where a longer audio
    track is no truncation as long as the audio really reaches that far."""
    declared = _declared_duration(container, stream)
    if not declared:
        return
    slack = 0.1 * declared + 2.0 / max(info.fps, 1e-6)
    if stream.duration is not None:
        reached = tl.end
    else:
        start = container.start_time / av.time_base if container.start_time is not None else 0.0
        reached = max(info.pts_offset_s + tl.end, audio_end) - start
    if reached < declared - slack:
        raise VideoError(f"truncated: decoded {reached:.2f} s of the {declared:.2f} s the container declares")
