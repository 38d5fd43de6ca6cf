"""Writes kept clips as standalone H.264 mp4 files (`clips.mode: mp4`).

It runs after the filter, so only kept clips are encoded; their `path` then points at the clip
file and every other clip stays a reference (`path == source_uri` plus its frame window). This
decodes each kept window a second time, from a keyframe seek; reference mode needs no second pass.
Clip file names are deterministic (OUTPUT/media/<video_id>/<clip_id>.mp4), so a resumed run
overwrites rather than duplicates.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from fractions import Fraction
from typing import ClassVar

import av

from curate.config import S3Config
from curate.stage import Stage
from curate.storage import Store, local_copy


def frames_in_window(path: str, start_frame: int, end_frame: int, fps: float):
    """Decoded frames [start_frame, end_frame) of a video, found by seeking to the keyframe before
    the window and counting frames by presentation time."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        t0 = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        start_t = start_frame / fps
        if start_frame > 0:
            container.seek(int((t0 + start_t) / stream.time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            idx = round((frame.time - t0) * fps)
            if idx < start_frame:
                continue
            if idx >= end_frame:
                break
            yield idx, frame


def write_mp4(
    frames, out_path: str, fps: float, out_fps: float | None, short_side: int | None, crf: int, preset: str
) -> tuple[int, int, int, float]:
    """Encode (index, frame) pairs to H.264, resampled to `out_fps` by frame time.

    Returns (frames written, width, height, fps) of the file."""
    rate = Fraction(out_fps or fps).limit_denominator(1001)
    written = 0
    with av.open(out_path, "w") as out:
        stream = None
        next_t = 0.0
        first = None
        for idx, frame in frames:
            first = idx if first is None else first
            t = (idx - first) / fps
            if out_fps and t + 1e-9 < next_t:
                continue
            if stream is None:
                w, h = frame.width, frame.height
                if short_side and min(w, h) > short_side:
                    s = short_side / min(w, h)
                    w, h = round(w * s / 2) * 2, round(h * s / 2) * 2
                stream = out.add_stream("libx264", rate=rate)
                stream.width, stream.height = w - w % 2, h - h % 2
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf), "preset": preset}
            img = frame.reformat(width=stream.width, height=stream.height, format="yuv420p")
            img.pts = written
            img.time_base = 1 / rate
            for packet in stream.encode(img):
                out.mux(packet)
            written += 1
            next_t += 1 / float(rate)
        if stream is not None:
            for packet in stream.encode():
                out.mux(packet)
    if stream is None:
        return 0, 0, 0, float(rate)
    return written, stream.width, stream.height, float(rate)


class TranscodeStage(Stage):
    name: ClassVar[str] = "transcode"
    order: ClassVar[int] = 90
    reads: ClassVar[frozenset[str]] = frozenset()
    kept_only: ClassVar[bool] = True

    output: str
    output_s3: S3Config = S3Config()
    input_s3: S3Config = S3Config()
    fps: float | None = None
    short_side: int | None = None
    crf: int = 20
    preset: str = "veryfast"
    batch_size: int = 4

    def process_batch(self, clips: list[dict]) -> list[dict]:
        store = Store(self.output, self.output_s3)
        by_source = defaultdict(list)
        for c in clips:
            by_source[c["source_uri"]].append(c)
        for uri, group in by_source.items():
            with local_copy(uri, self.input_s3) as src, tempfile.TemporaryDirectory(prefix="curate-clip-") as tmp:
                for c in group:
                    local = os.path.join(tmp, f"{c['clip_id']}.mp4")
                    frames = frames_in_window(src, c["start_frame"], c["end_frame"], c["fps"])
                    n, w, h, fps = write_mp4(frames, local, c["fps"], self.fps, self.short_side, self.crf, self.preset)
                    if n == 0:
                        raise RuntimeError(f"no frames decoded in [{c['start_frame']}, {c['end_frame']}) of {uri}")
                    rel = f"media/{c['video_id']}/{c['clip_id']}.mp4"
                    store.upload_file(rel, local)
                    # The row now describes the file at `path`; start/end_frame stay source frame numbers.
                    c.update(path=store.uri(rel), num_frames=n, width=w, height=h, fps=fps, aspect_ratio=w / h)
        return clips
