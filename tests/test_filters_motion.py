import cv2
import numpy as np
import pytest
from filter_footage import pan_record, record

from filters.motion import MotionStage


@pytest.fixture(params=["dis", "farneback"])
def stage(request):
    s = MotionStage(method=request.param)
    s.setup()
    return s


def test_ranks_frozen_slow_fast(stage):
    frozen, slow, fast = stage.process_batch([pan_record(0, "frozen"), pan_record(0.25, "slow"), pan_record(2, "fast")])
    assert frozen["motion_score"] < 1e-4
    assert frozen["motion_score"] < slow["motion_score"] < fast["motion_score"]
    assert slow["motion_score"] > 5 * max(frozen["motion_score"], 1e-4)
    assert fast["motion_score"] > 2 * slow["motion_score"]
    for c in (frozen, slow, fast):
        assert c["motion_min"] <= c["motion_score"] <= c["motion_max"]


def test_dis_measures_the_true_speed():
    """DIS recovers the pan speed in frame diagonals per second within a few percent."""
    s = MotionStage()
    s.setup()
    for speed in (0.5, 2.0):
        (c,) = s.process_batch([pan_record(speed)])
        true = speed * 25 / np.hypot(320, 192)
        assert c["motion_score"] == pytest.approx(true, rel=0.05)


def test_independent_of_resolution_and_cadence():
    s = MotionStage()
    s.setup()
    base = pan_record(1.0)
    half = dict(base, motion_frames=np.stack([cv2.resize(f, (f.shape[1] // 2, f.shape[0] // 2), interpolation=cv2.INTER_AREA) for f in base["motion_frames"]]))
    # Every other frame: pairs twice as far apart in time, so twice the displacement per pair.
    sparse = dict(base, motion_frames=base["motion_frames"][::2], motion_frame_times=base["motion_frame_times"][::2])
    a, b, c = (s.process_batch([dict(r)])[0]["motion_score"] for r in (base, half, sparse))
    assert b == pytest.approx(a, rel=0.1)
    assert c == pytest.approx(a, rel=0.1)


def test_too_few_frames_gives_nulls():
    s = MotionStage()
    s.setup()
    one = record("one", motion_frames=np.zeros((1, 128, 214), np.uint8), motion_indices=[0])
    none = record("none")
    for c in s.process_batch([one, none]):
        assert c["motion_score"] is None and c["motion_min"] is None and c["motion_max"] is None


def test_rules():
    assert MotionStage(min_score=0.01, max_score=0.5).filter_rules() == ["motion_score >= 0.01", "motion_score <= 0.5"]
    assert MotionStage(min_score=None).filter_rules() == []


def test_fast_and_medium_presets_agree_within_reach():
    """The default `fast` DIS preset measures what `medium` does on motion within its reach."""
    fast, medium = MotionStage(), MotionStage(preset="medium")
    assert fast.preset == "fast"
    for s in (fast, medium):
        s.setup()
    for speed in (0.25, 1.0, 2.0):
        a, b = (s.process_batch([pan_record(speed)])[0]["motion_score"] for s in (fast, medium))
        assert a == pytest.approx(b, rel=0.01)
