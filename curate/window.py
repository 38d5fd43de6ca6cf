"""Reading a clip window of a video by presentation time, and writing it as a standalone mp4.

A window is [start_s, end_s) in seconds from the video stream's first frame, as the manifests give
it (`start_s`, `end_s`, with `pts_offset_s` and `stream_index`). Every reader of a clip (mp4 clip
files, shards, the trainer, report thumbnails) goes through `WindowReader`, which seeks to the
keyframe before the window and then checks where it landed: containers without an index (MPEG-TS)
or a decoder that drops frames up to the next keyframe can land after the target, so it seeks
further back, and in the end decodes from the start. It never returns frames from outside the
window, nor a window missing its first frames.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Iterator
from fractions import Fraction

import av
import numpy as np

from curate.video import VideoError, geometry, open_video, to_rgb, upright

EPS = 1e-4  # s: manifests store times as doubles; far below any frame interval
# How far before the window each further seek goes (s); then the whole stream is decoded.
SEEK_BACKOFF_S = (0.0, 2.0, 10.0, 60.0)


class WindowReader:
    """Frames of one video stream by presentation time. `source` is a path or the bytes of a file.

    `stream_index` and `pts_offset_s` come from the manifest; when missing, the movie stream is chosen
    as the decode pass chose it and the time origin is the first decoded frame."""

    def __init__(self, source: str | bytes, stream_index: int | None = None, pts_offset_s: float | None = None):
        self.source = source
        self.stream_index = stream_index
        self._open()
        self.origin = pts_offset_s if pts_offset_s is not None else self._first_time()

    def _open(self) -> None:
        src = io.BytesIO(self.source) if isinstance(self.source, bytes) else self.source
        if self.stream_index is None:
            self.container, self.stream = open_video(src)
        else:
            self.container = av.open(src)
            self.stream = self.container.streams[self.stream_index]
            if self.stream.type != "video":
                raise VideoError(f"stream {self.stream_index} is not a video stream")
        self.stream.thread_type = "AUTO"

    def _reopen(self) -> None:
        self.container.close()
        self._open()

    def _first_time(self) -> float:
        for frame in self.container.decode(self.stream):
            t = frame.time or 0.0
            self._reopen()
            return t
        raise VideoError("no decodable frames")

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> WindowReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _decode_from(self, t: float) -> Iterator[tuple[float, av.VideoFrame]]:
        """(time from the origin, frame) from the keyframe at or before absolute time `t` (or from the
        start of the stream when `t` is before the first frame)."""
        if t <= self.origin + EPS:
            self._reopen()
        else:
            self.container.seek(math.floor(t / self.stream.time_base), stream=self.stream, backward=True, any_frame=False)
        last = None
        for frame in self.container.decode(self.stream):
            if frame.time is None:
                continue
            rel = frame.time - self.origin
            if last is not None and rel <= last:
                continue
            last = rel
            yield rel, frame

    def _landed(self, start_s: float) -> Iterator[tuple[float, av.VideoFrame]]:
        """(time, frame) from a seek point whose first frame is at or before `start_s` (or from the
        start of the stream): seeks further back while a seek lands after it."""
        target = self.origin + start_s
        for back in SEEK_BACKOFF_S:
            if target - back <= self.origin + EPS:
                break
            frames = self._decode_from(target - back)
            first = next(frames, None)
            if first is not None and first[0] <= start_s + EPS:
                yield first
                yield from frames
                return
        yield from self._decode_from(self.origin)

    def frames(self, start_s: float, end_s: float) -> Iterator[tuple[float, av.VideoFrame]]:
        """(time, frame) of every frame with start_s <= time < end_s, in order."""
        for rel, frame in self._landed(start_s):
            if rel >= end_s - EPS:
                return
            if rel >= start_s - EPS:
                yield rel, frame

    def frames_at(self, times: Iterable[float]) -> list[tuple[float, av.VideoFrame]]:
        """For each time (sorted ascending), the frame on screen then: the last frame at or before it
        (the first frame for a time before the first frame). One read from the first time to the last."""
        times = list(times)
        out: list[tuple[float, av.VideoFrame]] = []
        prev = None
        for rel, frame in self._landed(times[0]) if times else ():
            while len(out) < len(times) and times[len(out)] < rel - EPS:
                out.append(prev or (rel, frame))
            if len(out) == len(times):
                break
            prev = (rel, frame)
        if prev is None and times:
            raise VideoError(f"no frames at or after {times[0]:.3f} s")
        return out + [prev] * (len(times) - len(out))

    def rgb(self, frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
        """The frame upright with square pixels at `size` (width, height as displayed), RGB uint8."""
        geom = geometry(self.stream, frame)
        return upright(to_rgb(frame, *geom.coded_size(size)), geom.rotation)

    def display_size(self, frame: av.VideoFrame, short_side: int | None = None) -> tuple[int, int]:
        """(width, height) as displayed (even), scaled down to `short_side` when given."""
        geom = geometry(self.stream, frame)
        return geom.scaled(short_side or min(geom.display_size))


def encode_mp4(
    pictures: Iterable[tuple[float, np.ndarray]],
    out_path: str,
    end_s: float,
    out_fps: float | None = None,
    rate: Fraction | None = None,
    crf: int = 20,
    preset: str = "veryfast",
) -> dict:
    """Encode (time, RGB picture) pairs, times in seconds from 0 and increasing, as H.264 in an mp4
    (BT.601, limited range, tagged so players convert back as we converted). Each picture is shown
    from its time until the next one's (the last until `end_s`): written at its own time, or, with
    `out_fps`, resampled onto that constant rate (each output frame shows the picture on screen at
    its time). `rate` is the nominal rate the container advertises (default: out_fps, else 25).

    Returns the file's `num_frames`, `width`, `height`, `fps` (average) and `duration_s`."""
    written = 0
    stream = None
    with av.open(out_path, "w") as out:

        def emit(picture: np.ndarray, t: float, upto: float) -> None:
            nonlocal written
            tb = stream.codec_context.time_base
            if out_fps:
                grid = range(max(math.ceil(t * out_fps - 1e-6), written), math.ceil(upto * out_fps - 1e-6))
            else:
                grid = [round(t / tb)]
            for pts in grid:
                frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
                frame.pts, frame.time_base = pts, tb
                for packet in stream.encode(frame):
                    out.mux(packet)
                written += 1

        pending = None  # the previous picture, written once the next one's time is known
        for t, picture in pictures:
            if stream is None:
                nominal = Fraction(out_fps).limit_denominator(1001) if out_fps else (rate or Fraction(25))
                stream = out.add_stream("libx264", rate=nominal)
                stream.height, stream.width = picture.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.codec_context.time_base = 1 / nominal if out_fps else Fraction(1, 90000)
                stream.codec_context.colorspace = 6  # SMPTE 170M (BT.601): what the RGB -> YUV conversion uses
                stream.codec_context.color_range = 1  # limited (tv)
                stream.options = {"crf": str(crf), "preset": preset}
            if pending is not None:
                emit(*pending, upto=t)
            pending = (picture, t)
        if pending is not None:
            emit(*pending, upto=end_s)
        if stream is not None:
            for packet in stream.encode():
                out.mux(packet)
    if stream is None:
        return {"num_frames": 0, "width": 0, "height": 0, "fps": float(out_fps or 0), "duration_s": 0.0}
    return {
        "num_frames": written,
        "width": stream.width,
        "height": stream.height,
        "fps": float(out_fps) if out_fps else written / end_s,
        "duration_s": end_s,
    }


def write_clip(
    reader: WindowReader,
    start_s: float,
    end_s: float,
    out_path: str,
    out_fps: float | None = None,
    short_side: int | None = None,
    crf: int = 20,
    preset: str = "veryfast",
) -> dict:
    """The window [start_s, end_s) as a standalone mp4, upright with square pixels at its displayed
    size (or `short_side`), at the source's presentation times or resampled to `out_fps`."""
    size = None

    def pictures():
        nonlocal size
        for t, frame in reader.frames(start_s, end_s):
            size = size or reader.display_size(frame, short_side)
            yield t - start_s, reader.rgb(frame, size)

    return encode_mp4(pictures(), out_path, end_s - start_s, out_fps, reader.stream.average_rate, crf, preset)
