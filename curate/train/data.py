"""Training clips: from the Parquet manifest or from shards, decoded a window at a time.

Rows come from a pipeline OUTPUT's clips manifest (kept clips passing `data.rules`) or from a
shard directory's index. A clip is read from its shard member by a range read, from its clip file,
or, for a reference clip, from its source video with one checked seek to the window. Frames are
chosen by presentation time; only those a sample needs are converted (upright, square pixels),
scaled to cover the clip's bucket, then centre-cropped. The temporal crop is drawn from (seed,
epoch, clip), so it is the same in a resumed run, and the held-out set always reads the middle of
the clip.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from curate.record import clip_file
from curate.shard import read_index, read_member, read_manifest, select_clips
from curate.storage import local_copy
from curate.train.config import DataConfig
from curate.window import WindowReader


def load_clips(cfg: DataConfig) -> list[dict]:
    """Manifest rows to train on, sorted by clip id."""
    if cfg.manifest is not None:
        return select_clips(read_manifest(cfg.manifest, cfg.s3), cfg.rules)
    return select_clips(read_index(cfg.shards, cfg.s3), cfg.rules)


def split_holdout(rows: list[dict], n: int) -> tuple[list[dict], list[dict]]:
    """(train, held out): the n clips first by a hash of their id, a split that never shifts."""
    order = sorted(rows, key=lambda r: hashlib.sha1(r["clip_id"].encode()).hexdigest())
    held = {r["clip_id"] for r in order[:n]}
    return [r for r in rows if r["clip_id"] not in held], [r for r in rows if r["clip_id"] in held]


def available_frames(row: dict, fps: float) -> int:
    """How many frames the clip yields at the training frame rate (never more than it holds)."""
    n, duration = int(row["num_frames"]), float(row["duration_s"])
    if n <= 0 or duration <= 0:
        return 0
    last = duration - duration / n  # the last frame's time, from the clip's start (average interval)
    return min(n, math.floor(last * fps + 1e-6) + 1)


def assign_bucket(row: dict, buckets: list[tuple[int, int, int]], fps: float) -> int:
    """Nearest aspect ratio among the buckets the clip has enough frames for (else the shortest ones)."""
    have = available_frames(row, fps)
    fits = [i for i, b in enumerate(buckets) if b[0] <= have]
    if not fits:
        shortest = min(b[0] for b in buckets)
        fits = [i for i, b in enumerate(buckets) if b[0] == shortest]
    aspect = math.log(int(row["width"]) / int(row["height"]))
    return min(fits, key=lambda i: (abs(math.log(buckets[i][2] / buckets[i][1]) - aspect), -buckets[i][0]))


def sample_times(duration_s: float, num_frames: int, fps: float, count: int, offset_u: float | None) -> list[float]:
    """`count` presentation times (s from the clip's start) at about `fps`; `offset_u` in [0, 1) places
    them in the clip (None: centred). A clip too short for the rate is sampled more densely, then
    repeats frames. Times, not frame numbers: variable-frame-rate clips play at their real speed."""
    interval = duration_s / max(num_frames, 1)  # the clip's average frame interval
    last = max(duration_s - interval, 0.0)  # the last frame's time
    step = max(1.0 / fps, interval)
    if count > 1 and (count - 1) * step > last:
        step = last / (count - 1)
    slack = max(last - (count - 1) * step, 0.0)
    offset = slack / 2 if offset_u is None else offset_u * slack
    return [offset + k * step for k in range(count)]


def read_frames(reader: WindowReader, start_s: float, times: list[float], height: int, width: int) -> np.ndarray:
    """RGB frames (K x height x width x 3 uint8): the frame on screen at each of `times` (s from
    `start_s`, sorted), from one checked seek, upright with square pixels, scaled to cover
    height x width, then centre-cropped."""
    out = []
    for _, frame in reader.frames_at([start_s + t for t in times]):
        w0, h0 = reader.display_size(frame)
        scale = max(height / h0, width / w0)
        w, h = max(width, math.ceil(w0 * scale)), max(height, math.ceil(h0 * scale))
        img = reader.rgb(frame, (w, h))
        top, left = (h - height) // 2, (w - width) // 2
        out.append(img[top : top + height, left : left + width])
    return np.stack(out)


class ClipDataset(torch.utils.data.Dataset):
    """Item `(epoch, i)` -> {"video": 3 x T x H x W float in [-1, 1], "caption", "clip_id"}.

    `epoch=None` is the evaluation crop (the middle of the clip).
    """

    def __init__(self, rows: list[dict], cfg: DataConfig, seed: int = 0):
        self.rows, self.cfg, self.seed = rows, cfg, seed
        self.buckets = [assign_bucket(r, cfg.buckets, cfg.fps) for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: tuple[int | None, int]) -> dict:
        epoch, i = item
        row = self.rows[i]
        frames, height, width = self.cfg.buckets[self.buckets[i]]
        u = None if epoch is None else np.random.default_rng([self.seed, epoch, i]).random()
        times = sample_times(float(row["duration_s"]), int(row["num_frames"]), self.cfg.fps, frames, u)
        if self.cfg.shards is not None:
            with WindowReader(read_member(self.cfg.shards, row, "mp4", self.cfg.s3)) as reader:
                clip = read_frames(reader, 0.0, times, height, width)
        elif clip_file(row):  # a clip file: its own frames from its start
            with local_copy(clip_file(row), self.cfg.s3) as path, WindowReader(path) as reader:
                clip = read_frames(reader, 0.0, times, height, width)
        else:  # a window of the source
            with local_copy(row["source_uri"], self.cfg.s3) as path, WindowReader(path, row.get("stream_index"), row.get("pts_offset_s")) as reader:
                clip = read_frames(reader, float(row["start_s"]), times, height, width)
        x = torch.from_numpy(np.ascontiguousarray(clip)).permute(3, 0, 1, 2).float() / 127.5 - 1.0
        return {"video": x, "caption": row.get("caption") or "", "clip_id": row["clip_id"]}


def collate(items: list[dict]) -> dict:
    return {
        "video": torch.stack([it["video"] for it in items]),
        "caption": [it["caption"] for it in items],
        "clip_id": [it["clip_id"] for it in items],
    }
