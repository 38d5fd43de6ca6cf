import cv2
import numpy as np
import pytest
from filter_footage import pan_record, record, sample_frames

from filters.quality import QualityStage, border_box


@pytest.fixture(scope="module")
def bikes():
    return sample_frames("bikes.mp4")


def score(frames, **kw):
    s = QualityStage(**kw)
    s.setup()
    return s.process_batch([record(frames=frames)])[0]


def test_sharpness_falls_with_blur(bikes):
    values = [score(np.stack([cv2.GaussianBlur(f, (0, 0), s) if s else f for f in bikes]))["sharpness"] for s in (0, 1, 2)]
    assert values[0] > 2 * values[1] > 4 * values[2]
    assert values[0] > QualityStage().min_sharpness > values[2]


def test_low_resolution_source_is_soft():
    """Measured at a fixed short side: the same shot from a 224-line source scores well below the
    448-line delivery, where the raw Laplacian of the small frames would call it sharper."""
    full = sample_frames("bigbuckbunny.mp4")
    small = np.stack([cv2.resize(f, (f.shape[1] // 2, f.shape[0] // 2), interpolation=cv2.INTER_AREA) for f in full])
    raw = [np.mean([cv2.Laplacian(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), cv2.CV_32F).var() for f in x]) for x in (full, small)]
    assert raw[1] > raw[0]
    assert score(small)["sharpness"] < 0.5 * score(full)["sharpness"]


def test_letterbox_and_pillarbox(bikes):
    k, h, w, _ = bikes.shape
    boxed = np.zeros((k, h + 120, w + 80, 3), np.uint8)
    boxed[:, 60 : 60 + h, 40 : 40 + w] = bikes
    assert border_box(cv2.cvtColor(boxed[0], cv2.COLOR_RGB2GRAY)[None]) == (60, 60 + h, 40, 40 + w)
    plain, boxed_scores = score(bikes), score(boxed)
    assert plain["border_share"] == 0.0
    assert boxed_scores["border_share"] == pytest.approx(1 - h * w / ((h + 120) * (w + 80)))
    # The bars are left out of every other measure.
    for col in ("sharpness", "luma_mean", "crushed_share"):
        assert boxed_scores[col] == pytest.approx(plain[col])


def test_dark_picture_is_not_a_letterbox(bikes):
    dark = (bikes * 0.08).astype(np.uint8)
    s = score(dark)
    assert s["border_share"] == 0.0
    assert s["luma_mean"] < QualityStage().min_luma
    assert s["crushed_share"] > 0.5


def test_exposure(bikes):
    plain = score(bikes)
    blown = score(np.clip(bikes.astype(np.int16) * 3, 0, 255).astype(np.uint8))
    assert 0.2 < plain["luma_mean"] < 0.6 and plain["crushed_share"] < 0.05 and plain["blown_share"] < 0.05
    assert blown["luma_mean"] > plain["luma_mean"] and blown["blown_share"] > 0.3


def test_frozen_share():
    s = QualityStage()
    s.setup()
    moving = pan_record(1.0)
    half = pan_record(1.0)
    m = half["motion_frames"].copy()
    m[4:] = m[4]  # frozen from the 5th motion frame on: 3 of 7 pairs identical
    half["motion_frames"] = m
    a, b, none = s.process_batch([moving, half, record("x")])
    assert a["frozen_share"] == 0.0
    assert b["frozen_share"] == pytest.approx(3 / 7)
    assert none["frozen_share"] is None and none["sharpness"] is None


def test_filter_rules():
    s = QualityStage(min_sharpness=10, max_border_share=None, min_luma=None, max_luma=None, max_frozen_share=0.25)
    assert s.filter_rules() == ["sharpness >= 10.0", "frozen_share <= 0.25"]
