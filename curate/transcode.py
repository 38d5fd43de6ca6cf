"""Writes kept clips as standalone H.264 mp4 files (`clips.mode: mp4`).

It runs after the filter, so only kept clips are encoded; their `clip_uri` and `path` then name the
clip file and every other clip stays a reference (`clip_uri` null, `path == source_uri`, plus its
time window). This decodes each kept window a second time, by presentation time from a checked
keyframe seek (`curate.window`); reference mode needs no second pass. Files are upright with square pixels and
keep the source's presentation times (or are resampled to `clips.fps`).
Clip file names are deterministic (OUTPUT/media/<video_id>/<clip_id>.mp4), so a resumed run
overwrites rather than duplicates.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from typing import ClassVar

from curate.config import S3Config
from curate.stage import Stage
from curate.storage import Store, local_copy
from curate.window import WindowReader, write_clip


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
                with WindowReader(src, group[0].get("stream_index"), group[0].get("pts_offset_s")) as reader:
                    for c in group:
                        local = os.path.join(tmp, f"{c['clip_id']}.mp4")
                        got = write_clip(reader, c["start_s"], c["end_s"], local, self.fps, self.short_side, self.crf, self.preset)
                        if not self.fps and got["num_frames"] != c["num_frames"]:
                            raise RuntimeError(
                                f"decoded {got['num_frames']} of the {c['num_frames']} frames in "
                                f"[{c['start_s']:.3f}, {c['end_s']:.3f}) s of {uri}"
                            )
                        rel = f"media/{c['video_id']}/{c['clip_id']}.mp4"
                        store.upload_file(rel, local)
                        # The row now describes the clip file; the window columns stay the source's.
                        uri = store.uri(rel)
                        c.update(clip_uri=uri, path=uri, aspect_ratio=got["width"] / got["height"], **got)
        return clips
