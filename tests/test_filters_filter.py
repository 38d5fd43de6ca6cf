import numpy as np
import pytest
from pydantic import ValidationError

from filters.filter import FilterStage, apply_rules, normalise_rule


def clip(**scores):
    return {"clip_id": "c", "kept": True, "filter_reasons": [], **scores}


def test_every_failed_rule_is_named_exactly():
    f = FilterStage(rules=["aesthetic_score >= 4.5", "motion_score>=0.01", "motion_score <= 0.5", "text_area_ratio <= 0.02", "sharpness >= 10"])
    good, bad, edge = f.process_batch(
        [
            clip(aesthetic_score=5.0, motion_score=0.1, text_area_ratio=0.0, sharpness=40.0),
            clip(aesthetic_score=3.2, motion_score=0.9, text_area_ratio=0.05, sharpness=2.0),
            clip(aesthetic_score=4.5, motion_score=0.01, text_area_ratio=0.02, sharpness=10.0),
        ]
    )
    assert (good["kept"], good["filter_reasons"]) == (True, [])
    assert (edge["kept"], edge["filter_reasons"]) == (True, [])
    assert bad["kept"] is False
    assert bad["filter_reasons"] == ["aesthetic_score >= 4.5", "motion_score <= 0.5", "text_area_ratio <= 0.02", "sharpness >= 10"]


def test_missing_and_nan_scores_fail_with_a_marker():
    rules = ["aesthetic_score >= 4.5"]
    out = apply_rules([clip(), clip(aesthetic_score=None), clip(aesthetic_score=float("nan")), clip(aesthetic_score=np.float32("nan"))], rules)
    assert [c["filter_reasons"] for c in out] == [["aesthetic_score >= 4.5 (missing)"]] * 4
    assert not any(c["kept"] for c in out)


def test_earlier_reasons_are_kept_and_rules_not_repeated():
    c = clip(motion_score=0.0)
    c["filter_reasons"] = ["caption failed"]
    (out,) = apply_rules([c], ["motion_score >= 0.002", "motion_score>=0.002"])
    assert out["filter_reasons"] == ["caption failed", "motion_score >= 0.002"]
    assert out["kept"] is False


def test_numpy_scores_strings_and_booleans():
    rules = ["aesthetic_score > 4", "lang == en", "has_audio == true", "aesthetic_score < 9"]
    ok, bad = apply_rules(
        [clip(aesthetic_score=np.float32(6.0), lang="en", has_audio=True), clip(aesthetic_score=np.float64(4.0), lang="de", has_audio=False)],
        rules,
    )
    assert ok["kept"] and ok["filter_reasons"] == []
    assert bad["filter_reasons"] == ["aesthetic_score > 4", "lang == en", "has_audio == True"]


def test_number_rule_on_text_column_fails_instead_of_raising():
    (out,) = apply_rules([clip(caption="a dog")], ["caption >= 3"])
    assert out["filter_reasons"] == ["caption >= 3"]


def test_rules_are_normalised_without_losing_digits():
    assert normalise_rule("aesthetic_score>=4.50") == "aesthetic_score >= 4.5"
    assert normalise_rule("sharpness >= 10.0") == "sharpness >= 10"
    assert normalise_rule("motion_score >= 0.00123456789") == "motion_score >= 0.00123456789"
    (out,) = apply_rules([clip(motion_score=0.001234567)], ["motion_score >= 0.00123456789"])
    assert out["kept"] is False


def test_bad_rule_is_refused():
    with pytest.raises(ValidationError, match="column op value"):
        FilterStage(rules=["aesthetic_score is high"])
