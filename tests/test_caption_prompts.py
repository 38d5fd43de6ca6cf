"""Caption templates, cleanup and status: the text handling both caption backends share."""

import pytest

from captioning import prompts
from captioning.stage import CaptionStage, provenance
from curate.config import ConfigError, _build_stages


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("The video shows a red car driving on a wet road.", "A red car driving on a wet road."),
        ("  This clip depicts   two dogs\n\nplaying in snow. ", "Two dogs playing in snow."),
        ("In this video, a man rides a bike.", "A man rides a bike."),
        ("In the video we see a cyclist on a hill.", "A cyclist on a hill."),
        ("The frames show: a busy street at night", "A busy street at night"),
        ("The video begins with a close-up of a flower.", "A close-up of a flower."),
        ('"A cat sleeps on a sofa."', "A cat sleeps on a sofa."),
        # Openings that carry content stay.
        ("The video game character jumps.", "The video game character jumps."),
        ("A woman says the video shows nothing.", "A woman says the video shows nothing."),
        ("A bird\x1a flies.\x00", "A bird flies."),
        ("\x1a", ""),
        ("", ""),
        (None, ""),
        ("   \n ", ""),
    ],
)
def test_clean(raw, cleaned):
    assert prompts.clean(raw) == cleaned


def test_status():
    assert prompts.status("A car.", finished=True) == "ok"
    assert prompts.status("A car", finished=False) == "truncated"
    assert prompts.status("", finished=True) == "empty"
    assert prompts.status("", finished=False) == "empty"


def test_templates():
    assert prompts.template_for("detailed") == prompts.DETAILED
    text = prompts.render(prompts.template_for("detailed"), 8, 4.26)
    assert "8 frames" in text and "4.3-second" in text
    custom = "Caption these {num_frames} frames of {duration_s:.0f} s; output {{json}}."
    assert prompts.render(prompts.template_for(custom), 3, 2.0) == "Caption these 3 frames of 2 s; output {json}."
    for bad in ["Describe {clip_id}.", "Unclosed {num_frames", "{0}"]:
        with pytest.raises(ValueError, match="prompt template"):
            prompts.template_for(bad)


def test_stage_config():
    (stage,) = _build_stages({"caption": {"model": "org/some-vlm", "max_new_tokens": 64}})
    assert isinstance(stage, CaptionStage) and stage.kept_only and stage.uses_actors
    assert [f.name for f in stage.outputs()] == ["caption", "caption_model", "caption_status", "caption_tokens"]
    (ref,) = stage.models()
    assert (ref.hf_repo, ref.local_path, ref.name, ref.stage) == ("org/some-vlm", None, "some-vlm", "caption")
    (ref,) = CaptionStage(model="org/some-vlm", weights="/models/vlm").models()
    assert (ref.hf_repo, ref.local_path) == ("org/some-vlm", "/models/vlm")
    (ref,) = CaptionStage(model="./models/my-vlm").models()
    assert (ref.hf_repo, ref.local_path, ref.name) == (None, "./models/my-vlm", "my-vlm")
    # The endpoint backend needs no weights and no GPU of its own.
    ep = CaptionStage(backend="endpoint", model="served-name")
    assert ep.models() == [] and ep.num_gpus == 0
    assert CaptionStage().num_gpus is None
    with pytest.raises(ConfigError, match="stages.caption.endpoint.bogus: unknown key"):
        _build_stages({"caption": {"backend": "endpoint", "endpoint": {"bogus": 1}}})
    with pytest.raises(ConfigError, match="stages.caption.prompt"):
        _build_stages({"caption": {"prompt": "Describe {subject}."}})


def test_provenance():
    snap = "/cache/models--Qwen--Qwen2.5-VL-7B-Instruct/snapshots/" + "a" * 40
    assert provenance("Qwen/Qwen2.5-VL-7B-Instruct", snap) == "Qwen/Qwen2.5-VL-7B-Instruct@" + "a" * 40
    assert provenance("Qwen/Qwen2.5-VL-7B-Instruct", "/models/qwen") == "Qwen/Qwen2.5-VL-7B-Instruct"
