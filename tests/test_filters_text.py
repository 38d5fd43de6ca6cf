import pytest
from filter_footage import draw_subtitle, draw_watermark, record, sample_frames

from curate.models import resolve
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


def test_clean_footage_scores_near_zero(stage, frames):
    assert stage.area_ratio(frames) < 0.002


def test_finds_subtitles(stage, frames):
    ratio = stage.area_ratio(draw_subtitle(frames))
    # One line of subtitles over the width of the frame: a few percent of its area.
    assert 0.02 < ratio < 0.08


def test_finds_a_small_watermark(stage, frames):
    assert 0.003 < stage.area_ratio(draw_watermark(frames)) < 0.02


def test_a_detected_box_that_does_not_read_as_text_does_not_count(stage):
    """The detector boxes a line of '=' signs; nothing legible is read there, so no text area."""
    frames = draw_subtitle(sample_frames("bikes.mp4"), "= = = = = = = =")
    found, _ = stage._ocr(frames[0][:, :, ::-1].copy(), use_cls=False, use_rec=False)
    assert found
    assert stage.area_ratio(frames) == 0.0


def test_persistent_only_drops_text_seen_in_one_frame(frames):
    once = frames.copy()
    once[-1] = draw_subtitle(frames[-1:])[0]
    every = draw_subtitle(frames)
    loose, strict = TextOverlayStage(), TextOverlayStage(persistent_only=True)
    loose.setup()
    strict.setup()
    assert loose.area_ratio(once) > 0.02
    assert strict.area_ratio(once) == 0.0
    assert strict.area_ratio(every) == pytest.approx(loose.area_ratio(every))


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


def test_models_resolve_to_the_packaged_onnx_files(tmp_path):
    refs = TextOverlayStage().models()
    assert [r.name for r in refs] == [
        "ch_PP-OCRv4_det_infer.onnx",
        "ch_PP-OCRv4_rec_infer.onnx",
        "ch_ppocr_mobile_v2.0_cls_infer.onnx",
    ]
    assert all(resolve(r).source == "package" for r in refs)
    override = TextOverlayStage(det_weights=str(tmp_path / "det.onnx")).models()[0]
    assert resolve(override).source == "missing"
