"""Training clips: from the Parquet manifest or from shards, decoded a window at a time.

Rows come from a pipeline OUTPUT's clips manifest (kept clips passing `data.rules`) or from a
shard directory's index. A clip is read from its shard member by a range read, from its clip file,
or, for a reference clip, from its source video with one seek to the window: only the frames a
sample needs are converted, already resized by FFmpeg to cover the clip's bucket, then
centre-cropped. The temporal crop is drawn from (seed, epoch, clip), so it is the same in a resumed
run, and the held-out set always reads the middle of the clip.
"""

from __future__ import annotations

import hashlib
import io
import math

import numpy as np
import torch

from curate.shard import read_index, read_member, read_manifest, select_clips
from curate.storage import local_copy
from curate.train.config import DataConfig
from curate.transcode import frames_in_window


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
    """How many frames the clip yields at the training frame rate."""
    n = int(row["num_frames"])
    stride = max(float(row["fps"]) / fps, 1.0)
    return int((n - 1) // stride) + 1 if n > 0 else 0


def assign_bucket(row: dict, buckets: list[tuple[int, int, int]], fps: float) -> int:
    """Nearest aspect ratio among the buckets the clip has enough frames for (else the shortest ones)."""
    have = available_frames(row, fps)
    fits = [i for i, b in enumerate(buckets) if b[0] <= have]
    if not fits:
        shortest = min(b[0] for b in buckets)
        fits = [i for i, b in enumerate(buckets) if b[0] == shortest]
    aspect = math.log(int(row["width"]) / int(row["height"]))
    return min(fits, key=lambda i: (abs(math.log(buckets[i][2] / buckets[i][1]) - aspect), -buckets[i][0]))


def frame_indices(start: int, end: int, src_fps: float, fps: float, count: int, offset_u: float | None) -> list[int]:
    """`count` frame numbers in [start, end) at about `fps`; `offset_u` in [0, 1) places the window
    (None: centred). A clip too short for the rate is sampled more densely, then repeats frames."""
    n = end - start
    stride = max(src_fps / fps, 1.0)
    if count > 1 and (count - 1) * stride > n - 1:
        stride = max(n - 1, 0) / (count - 1)
    span = (count - 1) * stride
    slack = max(n - 1 - span, 0.0)
    offset = slack / 2 if offset_u is None else offset_u * slack
    idx = np.floor(offset + np.arange(count) * stride + 0.5).astype(int)
    return (start + np.clip(idx, 0, max(n - 1, 0))).tolist()


def read_frames(source: str | bytes, fps: float, indices: list[int], height: int, width: int) -> np.ndarray:
    """RGB frames (K x height x width x 3 uint8) at sorted frame numbers, from one seek.

    Only the wanted frames are converted, scaled by FFmpeg to cover height x width, then
    centre-cropped. Indices may repeat (a clip shorter than asked for); frames past the real end
    of the stream repeat the last one decoded, since frame counts are sometimes off by a few.
    """
    wanted = set(indices)
    got: dict[int, np.ndarray] = {}
    src = io.BytesIO(source) if isinstance(source, bytes) else source
    for i, frame in frames_in_window(src, indices[0], indices[-1] + 1, fps):
        if i in wanted and i not in got:
            scale = max(height / frame.height, width / frame.width)
            w, h = max(width, math.ceil(frame.width * scale)), max(height, math.ceil(frame.height * scale))
            img = frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="AREA")
            top, left = (h - height) // 2, (w - width) // 2
            got[i] = img[top : top + height, left : left + width]
    if not got:
        raise ValueError(f"no frames decoded in [{indices[0]}, {indices[-1] + 1})")
    out, prev = [], got[min(got)]
    for i in indices:
        prev = got.get(i, prev)
        out.append(prev)
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
        fps = float(row["fps"])
        if self.cfg.shards is None and row["path"] == row["source_uri"]:
            start, end = int(row["start_frame"]), int(row["end_frame"])
        else:  # a clip file or shard member: its own frames from 0
            start, end = 0, int(row["num_frames"])
        indices = frame_indices(start, end, fps, self.cfg.fps, frames, u)
        if self.cfg.shards is not None:
            clip = read_frames(read_member(self.cfg.shards, row, "mp4", self.cfg.s3), fps, indices, height, width)
        else:
            with local_copy(row["path"], self.cfg.s3) as path:
                clip = read_frames(path, fps, indices, height, width)
        x = torch.from_numpy(np.ascontiguousarray(clip)).permute(3, 0, 1, 2).float() / 127.5 - 1.0
        return {"video": x, "caption": row.get("caption") or "", "clip_id": row["clip_id"]}


def collate(items: list[dict]) -> dict:
    return {
        "video": torch.stack([it["video"] for it in items]),
        "caption": [it["caption"] for it in items],
        "clip_id": [it["clip_id"] for it in items],
    }
