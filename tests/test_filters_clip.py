"""Embedding, aesthetic and caption-alignment stages on tiny random-weight models loaded through the
model resolver, and the start-up failure when a model cannot be found."""

import numpy as np
import pytest
import torch
from filter_footage import record, sample_frames
from tiny_clip import make_aesthetic_head, make_tiny_clip

from curate.config import PipelineConfig
from curate.models import ModelNotFound, resolve
from filters.aesthetic import HEAD_NAME, AestheticStage, aesthetic_head
from filters.caption_alignment import CaptionAlignmentStage
from filters.clip_model import ClipEncoder, ClipSpec, frame_embeddings
from filters.embedding import ClipEmbeddingStage


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"clip": make_tiny_clip(d), "head": str(make_aesthetic_head(d / HEAD_NAME))}


@pytest.fixture(scope="module")
def clips():
    bikes, bunny = sample_frames("bikes.mp4"), sample_frames("bigbuckbunny.mp4")
    return lambda: [record("bikes", frames=bikes), record("bunny", frames=bunny), record("empty")]


@pytest.fixture(scope="module")
def embedder(models):
    s = ClipEmbeddingStage(clip=models["clip"])
    s.setup()
    return s


def test_embedding_shapes_dtypes_and_norms(embedder, clips):
    bikes, bunny, empty = embedder.process_batch(clips())
    for c in (bikes, bunny):
        e = c["clip_embedding"]
        assert e.dtype == np.float32 and e.shape == (768,)
        assert np.linalg.norm(e) == pytest.approx(1.0, abs=1e-5)
        frames = np.asarray(c["frame_embeddings"])
        assert frames.shape == (3, 768) and frames.dtype == np.float32
        mean = frames.mean(0)
        np.testing.assert_allclose(e, mean / np.linalg.norm(mean), atol=1e-6)
        assert 0.0 <= c["text_overlay_prob"] <= 1.0
    assert not np.allclose(bikes["clip_embedding"], bunny["clip_embedding"])
    assert empty["clip_embedding"] is None and empty["text_overlay_prob"] is None
    assert [f.name for f in embedder.outputs()] == ["clip_embedding", "text_overlay_prob"]


def test_embedding_is_deterministic_and_batch_independent(models, embedder, clips):
    again = ClipEmbeddingStage(clip=models["clip"])
    again.setup()
    a = embedder.process_batch(clips())
    b = again.process_batch(clips()[1:2])  # alone in its batch, in a fresh model
    np.testing.assert_allclose(a[1]["clip_embedding"], b[0]["clip_embedding"], atol=1e-5)


def test_aesthetic_matches_the_head_on_normalised_embeddings(models, embedder, clips):
    batch = embedder.process_batch(clips())
    stage = AestheticStage(clip=models["clip"], weights=models["head"])
    stage.setup()
    out = stage.process_batch([dict(c) for c in batch])
    assert stage._encoder is None  # the embedding stage's frame embeddings were reused: CLIP never loaded
    head = aesthetic_head()
    head.load_state_dict(torch.load(models["head"], weights_only=True))
    head.eval()
    assert sorted(head.state_dict()) == [f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("bias", "weight")]
    for c, src in zip(out[:2], batch[:2]):
        with torch.no_grad():
            per_frame = head(torch.from_numpy(np.asarray(src["frame_embeddings"]))).squeeze(1).numpy()
        assert isinstance(c["aesthetic_score"], float)
        assert c["aesthetic_score"] == pytest.approx(float(per_frame.mean()), abs=1e-5)
    assert out[2]["aesthetic_score"] is None
    # Without upstream embeddings it runs CLIP itself and gets the same scores.
    alone = AestheticStage(clip=models["clip"], weights=models["head"], aggregate="min")
    alone.setup()
    fresh = alone.process_batch(clips())
    assert alone._encoder is not None
    with torch.no_grad():
        mins = [float(head(torch.from_numpy(np.asarray(c["frame_embeddings"]))).min()) for c in batch[:2]]
    assert [c["aesthetic_score"] for c in fresh[:2]] == pytest.approx(mins, abs=1e-4)


def test_head_and_clip_size_mismatch_is_explained(models, tmp_path):
    path = tmp_path / "head512.pth"
    torch.save(aesthetic_head(512).state_dict(), path)
    stage = AestheticStage(clip=models["clip"], weights=str(path))
    stage.setup()
    with pytest.raises(ValueError, match="takes 512-d embeddings but CLIP 'TinyCLIP-test' gives 768-d"):
        stage.process_batch([record(frames=np.zeros((1, 64, 64, 3), np.uint8))])


def test_frame_embeddings_survive_the_arrow_hop_between_stages(models, embedder, clips):
    """Between Ray stages records travel as Arrow tables: the per-frame embeddings must arrive intact."""
    from curate.record import clip_schema, from_table, to_table

    batch = embedder.process_batch(clips())
    schema = clip_schema(embedder.outputs())
    back = from_table(to_table(batch, schema))
    stage = AestheticStage(clip=models["clip"], weights=models["head"])
    stage.setup()
    hopped = stage.process_batch(back)
    assert stage._encoder is None
    direct = stage.process_batch(batch)
    assert [c["aesthetic_score"] for c in hopped] == [c["aesthetic_score"] for c in direct]


def test_embeddings_from_another_model_are_not_reused(models, embedder, clips):
    batch = embedder.process_batch(clips())
    other = ClipSpec(**{**models["clip"], "pretrained": "other-tag"})
    calls = []

    def factory():
        calls.append(1)
        return embedder._encoder

    frame_embeddings(batch, ClipSpec(**models["clip"]), factory)
    assert calls == []
    frame_embeddings(batch, other, factory)
    assert calls == [1]


def test_caption_alignment(models, embedder, clips):
    batch = embedder.process_batch(clips())
    batch[0]["caption"] = "people riding bikes on a road"
    batch[1]["caption"] = None
    stage = CaptionAlignmentStage(clip=models["clip"], mode="filter", min_score=-1.0)
    stage.setup()
    out = stage.process_batch(batch)
    text = stage._encoder.encode_texts(["people riding bikes on a road"])[0]
    assert out[0]["clip_text_score"] == pytest.approx(float(text @ out[0]["clip_embedding"]), abs=1e-5)
    assert out[1]["clip_text_score"] is None
    missing = ["clip_text_score >= -1 (missing)"]
    assert [c["filter_reasons"] for c in out] == [[], missing, missing]
    assert stage.filter_rules() == []  # applied by the stage itself: it runs after the filter stage


def test_clip_resolves_from_model_dir(models, tmp_path, monkeypatch):
    import shutil

    spec = ClipSpec(**{**models["clip"], "weights": None})
    (tmp_path / spec.model).mkdir()
    shutil.copy(models["clip"]["weights"], tmp_path / spec.model / "open_clip_pytorch_model.bin")
    monkeypatch.setenv("CURATE_MODEL_DIR", str(tmp_path))
    assert resolve(spec.ref("embedding")).source == "CURATE_MODEL_DIR"
    enc = ClipEncoder(spec, "embedding")
    assert enc.encode_texts(["a"]).shape == (1, 768)


def test_default_refs_name_the_real_checkpoints():
    emb, head = AestheticStage().models()
    assert (emb.name, emb.hf_repo, emb.hf_filename) == ("ViT-L-14-openai", "timm/vit_large_patch14_clip_224.openai", "open_clip_model.safetensors")
    assert head.name == "sac+logos+ava1-l14-linearMSE.pth" and head.url.endswith(head.name)


def test_missing_model_fails_at_start_with_instructions(tmp_path, monkeypatch):
    """The pipeline resolves every model before touching any input: the error names the model and
    every way to provide it."""
    from curate.engine import run_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("CURATE_MODEL_DIR", raising=False)
    cfg = PipelineConfig.model_validate(
        {
            "input": {"paths": [str(tmp_path / "does-not-exist")]},
            "output": {"path": str(tmp_path / "out")},
            "shots": {"detector": "adaptive"},
            "stages": {"embedding": {}, "aesthetic": {"mode": "filter"}},
        }
    )
    with pytest.raises(ModelNotFound) as e:
        run_pipeline(cfg, echo=lambda *_: None)
    msg = str(e.value)
    assert "model 'ViT-L-14-openai' for stage 'embedding'" in msg
    assert "embedding.clip.weights" in msg and "$CURATE_MODEL_DIR/ViT-L-14-openai" in msg
    assert "`hf download timm/vit_large_patch14_clip_224.openai open_clip_model.safetensors`" in msg
    assert not (tmp_path / "out").exists()

    cfg.stages["embedding"] = {"mode": "off"}
    cfg.stages["aesthetic"]["clip"] = {"weights": str(tmp_path)}
    with pytest.raises(ModelNotFound, match=r"model 'sac\+logos\+ava1-l14-linearMSE.pth' for stage 'aesthetic'.*aesthetic.weights"):
        run_pipeline(cfg, echo=lambda *_: None)
