"""Real-world footage (phone, camera, drone, DVD, broadcast, downloads), generated with the ffmpeg CLI
so the right values are known: presentation times on variable frame rate, displayed size with
non-square pixels and rotation, the movie stream among covers and thumbnails, edit lists, honest
durations, colour range, and every clip reader landing on the window's own frames."""

from __future__ import annotations

import os

import av
import cv2
import numpy as np
import pytest
from footage import autorotated_frame, dim_noisy_picture, ffmpeg, remux, rotated, two_shots, vfr_video

from curate.config import PipelineConfig
from curate.report import clip_thumbnails
from curate.shard import ShardConfig, bucket_of
from curate.split import split_video
from curate.train.data import read_frames
from curate.transcode import TranscodeStage
from curate.video import best_video_stream
from curate.window import WindowReader
from filters.quality import QualityStage


def cfg_for(**sections) -> PipelineConfig:
    base = {"input": {"paths": ["x"]}, "output": {"path": "o"}, "clips": {"min_duration_s": 0.5}, "shots": {"detector": "curate"}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return PipelineConfig.model_validate(base)


def split(path, **sections) -> tuple[list[dict], dict]:
    recs = list(split_video(str(path), str(path), cfg_for(**sections)))
    return recs[:-1], recs[-1]["video"]


def source_frames(path) -> list[tuple[float, np.ndarray]]:
    """(time from the first frame, RGB) of every frame of the movie stream, by a plain full decode."""
    with av.open(str(path)) as c:
        s = best_video_stream(c)
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(s)]
    return [(t - frames[0][0], img) for t, img in frames]


def thumb(img: np.ndarray) -> np.ndarray:
    return cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (32, 24), interpolation=cv2.INTER_AREA).astype(float)


def closest(img: np.ndarray, candidates: list[tuple[float, np.ndarray]]) -> float:
    """The time of the candidate frame that looks most like `img` (small grey thumbnails)."""
    t = thumb(img)
    return min(candidates, key=lambda c: np.abs(thumb(c[1]) - t).mean())[0]


def decoded(path) -> list[tuple[float, np.ndarray]]:
    """(time, RGB) of a clip file as any player decodes it."""
    with av.open(str(path)) as c:
        return [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def write_clip_files(tmp_path, clips: list[dict], **kw) -> list[dict]:
    """The mp4 clip writer (clips.mode: mp4) on these clips; returns the rows as it updates them."""
    return TranscodeStage(output=str(tmp_path / "out"), **kw).process_batch([dict(c) for c in clips])


# ---------------------------------------------------------------- variable frame rate


@pytest.mark.parametrize("ext", ["mp4", "mkv", "mov"])
def test_variable_frame_rate_times_are_presentation_times(tmp_path, ext):
    src = vfr_video(tmp_path / "vfr.mp4")
    path = src if ext == "mp4" else remux(src, tmp_path / f"vfr.{ext}")
    clips, video = split(path)
    assert video["status"] == "ok", video["error"]
    assert video["scenes"] == [[0, 30], [30, 120]]  # the cut: 3.0 s is decoded frame 30
    assert video["vfr"] is True and video["num_frames"] == 120
    assert video["duration_s"] == pytest.approx(6.0, abs=1 / 30)
    assert video["fps"] == pytest.approx(20.0, rel=0.02)  # the average: 120 frames in 6 s
    (a, b) = clips
    # Within one frame duration of the true cut (before: (0, 1.53) and (1.53, 6.13) s).
    assert (a["start_s"], a["end_s"]) == pytest.approx((0.0, 3.0), abs=1 / 30)
    assert (b["start_s"], b["end_s"]) == pytest.approx((3.0, 6.0), abs=1 / 30)
    assert b["end_s"] <= video["duration_s"] + 1e-6
    assert a["fps"] == pytest.approx(10.0, rel=0.02) and b["fps"] == pytest.approx(30.0, rel=0.02)
    # The frames handed to the stages come from their own shot, at their own times.
    frames = source_frames(path)
    for c in clips:
        assert all(c["start_s"] <= t < c["end_s"] for t in c["frame_times"])
        for img, t in zip(c["frames"], c["frame_times"]):
            assert closest(img, frames) == pytest.approx(t, abs=1e-3)


def test_variable_frame_rate_clip_files_hold_their_own_frames_at_their_times(tmp_path):
    path = vfr_video(tmp_path / "vfr.mp4")
    clips, _ = split(path)
    frames = source_frames(path)
    for c in write_clip_files(tmp_path, clips):
        got = decoded(c["path"])
        want = [(t, img) for t, img in frames if c["start_s"] - 1e-4 <= t < c["end_s"] - 1e-4]
        assert c["num_frames"] == len(got) == len(want)  # before: clip 2 held 14 frames of the previous shot
        assert closest(got[0][1], frames) == pytest.approx(c["start_s"], abs=1e-3)
        assert closest(got[-1][1], frames) == pytest.approx(want[-1][0], abs=1e-3)
        # The file plays at the source's pace: 10 fps, then 30 fps.
        assert [t - got[0][0] for t, _ in got] == pytest.approx([t - want[0][0] for t, _ in want], abs=1e-3)
        assert c["duration_s"] == pytest.approx(3.0, abs=1 / 30)


def test_resampled_clip_files_follow_presentation_time(tmp_path):
    path = vfr_video(tmp_path / "vfr.mp4")
    clips, _ = split(path)
    frames = source_frames(path)
    a = write_clip_files(tmp_path, clips[:1], fps=30)[0]
    got = decoded(a["path"])
    assert len(got) == 90 and a["fps"] == pytest.approx(30.0)  # 3 s of 10 fps footage at 30 fps
    for k in (0, 1, 2, 3, 89):  # each source frame is on screen for three output frames
        assert closest(got[k][1], frames) == pytest.approx((k // 3) / 10, abs=1e-3)


# ---------------------------------------------------------------- display geometry


@pytest.mark.parametrize(
    "size, sar, shown",
    [("720x480", "32/27", (854, 480)), ("720x576", "64/45", (1024, 576)), ("352x288", "12/11", (384, 288))],
)
def test_non_square_pixels_are_shown_at_their_display_size(tmp_path, size, sar, shown):
    path = two_shots(tmp_path / "sar.mp4", size=size, rate=25, vf=f"setsar={sar}")
    clips, video = split(path)
    w, h = (int(x) for x in size.split("x"))
    num, den = (int(x) for x in sar.split("/"))
    assert (video["width"], video["height"]) == shown
    assert video["aspect_ratio"] == pytest.approx(w * num / den / h)  # before: 1.5 for 720x480
    assert video["sar"] == f"{num}:{den}"
    assert video["scenes"] == [[0, 75], [75, 150]]
    for c in clips:
        assert (c["width"], c["height"]) == shown and c["aspect_ratio"] == pytest.approx(video["aspect_ratio"])
        # Frames fed to CLIP, captioning and the scorers have square pixels (not squeezed).
        fh, fw = c["frames"].shape[1:3]
        assert fw / fh == pytest.approx(video["aspect_ratio"], rel=0.01)
        assert c["motion_frames"].shape[2] / c["motion_frames"].shape[1] == pytest.approx(video["aspect_ratio"], rel=0.02)
    # The picture is the one a player shows (compared with the ffmpeg CLI's SAR-corrected frame).
    shown_frame = autorotated_frame(path, clips[0]["frame_times"][1])
    assert np.abs(thumb(cv2.resize(clips[0]["frames"][1], shown_frame.shape[1::-1])) - thumb(shown_frame)).mean() < 4
    # Clip files play unsqueezed, and shards bucket them by what is shown.
    for c in write_clip_files(tmp_path, clips):
        with av.open(c["path"]) as f:
            s = f.streams.video[0]
            assert (s.codec_context.width, s.codec_context.height) == shown
            assert s.sample_aspect_ratio in (None, 0, 1)
        assert (c["width"], c["height"]) == shown
    ratio = "16_9" if shown[0] / shown[1] > 1.5 else "4_3"
    assert f"aspect_ratio_{ratio}/" in bucket_of(clips[0], ShardConfig())


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotated_phone_video_is_upright_everywhere(tmp_path, degrees):
    base = two_shots(tmp_path / "base.mp4", size="320x240", rate=25)
    path = rotated(base, tmp_path / f"rot{degrees}.mp4", degrees)
    clips, video = split(path)
    turned = degrees % 180 == 90
    assert video["rotation"] == degrees
    assert (video["width"], video["height"]) == ((240, 320) if turned else (320, 240))
    upright = autorotated_frame(path, clips[0]["frame_times"][1])  # what the ffmpeg CLI (and players) show
    frame = clips[0]["frames"][1]
    assert frame.shape[:2] == upright.shape[:2]
    assert np.abs(thumb(frame) - thumb(upright)).mean() < 4
    got = decoded(write_clip_files(tmp_path, clips[:1])[0]["path"])
    k = round(clips[0]["frame_times"][1] * 25)
    assert got[k][1].shape[:2] == upright.shape[:2]
    assert np.abs(thumb(got[k][1]) - thumb(upright)).mean() < 5


# ---------------------------------------------------------------- which stream, what metadata


def test_thumbnail_track_first_is_not_the_video(tmp_path):
    movie = two_shots(tmp_path / "movie.mp4", size="320x240", rate=30)
    ffmpeg("-f", "lavfi", "-i", "color=c=red:s=160x120:d=1", "-frames:v", "1", str(tmp_path / "thumb.jpg"))
    path = tmp_path / "drone.mp4"
    ffmpeg("-i", str(tmp_path / "thumb.jpg"), "-i", movie, "-map", "0", "-map", "1:v", "-c", "copy", str(path))
    clips, video = split(path)
    assert video["status"] == "ok", video["error"]  # before: "only one frame: a still image"
    assert video["stream_index"] == 1 and video["num_frames"] == 180 and (video["width"], video["height"]) == (320, 240)
    assert [c["stream_index"] for c in clips] == [1, 1]
    got = write_clip_files(tmp_path, clips[1:])[0]
    assert got["num_frames"] == 90


def test_matroska_cover_first_is_not_the_video(tmp_path):
    movie = two_shots(tmp_path / "movie.mp4", size="320x240", rate=30)
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=160x120:d=1", "-frames:v", "1", str(tmp_path / "cover.png"))
    path = tmp_path / "cover.mkv"
    ffmpeg("-i", str(tmp_path / "cover.png"), "-i", movie, "-map", "0", "-map", "1:v", "-c", "copy",
           "-disposition:v:0", "attached_pic", str(path))
    clips, video = split(path)
    assert video["status"] == "ok", video["error"]
    assert video["stream_index"] == 1 and video["num_frames"] == 180
    assert video["scenes"] == [[0, 90], [90, 180]]


def test_edit_list_hiding_lead_in_samples_is_no_truncation(tmp_path):
    src = tmp_path / "movie.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=320x240:r=30:d=6", "-g", "60", "-c:v", "libx264", "-preset", "ultrafast", str(src))
    path = tmp_path / "trimmed.mp4"
    ffmpeg("-ss", "1.0", "-i", str(src), "-c", "copy", str(path))
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 180  # the container counts the 30 hidden samples too
    clips, video = split(path)
    assert video["status"] == "ok", video["error"]  # before: "truncated: decoded 150 of 180 frames"
    assert video["num_frames"] == 150 and video["duration_s"] == pytest.approx(5.0, abs=1 / 30)


@pytest.mark.parametrize("ext, codec", [("mkv", ("-c:v", "libx264", "-preset", "ultrafast")),
                                        ("webm", ("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"))])
def test_matroska_without_frame_counts(tmp_path, ext, codec):
    path = two_shots(tmp_path / f"movie.{ext}", codec=codec)
    with av.open(path) as c:
        assert not c.streams.video[0].frames
    clips, video = split(path)
    assert video["status"] == "ok" and video["num_frames"] == 180 and video["scenes"] == [[0, 90], [90, 180]]
    # Cut short: the decoded frames end well before the declared duration.
    data = open(path, "rb").read()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: len(data) // 2])
    _, video = split(cut)
    assert video["status"] == "error" and "truncated" in video["error"]


def test_duration_is_the_video_streams_not_the_longest_streams(tmp_path):
    movie = two_shots(tmp_path / "movie.mp4", size="320x240", rate=30)
    for ext in ("mkv", "mp4"):
        path = tmp_path / f"with_audio.{ext}"
        ffmpeg("-i", movie, "-f", "lavfi", "-t", "8", "-i", "sine=frequency=440", "-map", "0:v", "-map", "1:a",
               "-c:v", "copy", "-c:a", "aac", str(path))
        with av.open(str(path)) as c:
            assert c.duration / av.time_base == pytest.approx(8.0, abs=0.1)  # the container's: the audio's
        clips, video = split(path)
        assert video["status"] == "ok", video["error"]
        assert video["duration_s"] == pytest.approx(6.0, abs=1 / 30)
        assert clips[-1]["end_s"] == pytest.approx(6.0, abs=1 / 30)


@pytest.mark.parametrize("ext, args", [("ts", ("-f", "mpegts")), ("mts", ("-f", "mpegts", "-mpegts_m2ts_mode", "1"))])
def test_mpeg_ts_windows_land_on_their_first_frame(tmp_path, ext, args):
    """MPEG-TS has no index: a seek lands after its target and the decoder drops frames up to the
    next keyframe. Every window still starts at its own first frame."""
    src = tmp_path / "long.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=20", "-g", "250", "-c:v", "libx264", "-preset", "ultrafast", str(src))
    path = tmp_path / f"long.{ext}"
    ffmpeg("-i", str(src), "-c", "copy", *args, str(path))
    clips, video = split(path, clips={"max_duration_s": 2.0})
    assert video["status"] == "ok" and video["pts_offset_s"] > 0  # TS timestamps start at 1.4 s
    assert len(clips) == 10
    frames = source_frames(path)
    with WindowReader(str(path), video["stream_index"], video["pts_offset_s"]) as reader:
        for c in clips:
            got = list(reader.frames(c["start_s"], c["end_s"]))
            want = [t for t, _ in frames if c["start_s"] - 1e-4 <= t < c["end_s"] - 1e-4]
            assert [t for t, _ in got] == pytest.approx(want, abs=1e-6)
            assert len(got) == c["num_frames"] == 50
            assert np.abs(thumb(reader.rgb(got[0][1], (320, 240))) - thumb(frames[c["start_frame"]][1])).mean() < 2
    for c in write_clip_files(tmp_path, clips[3:5]):
        got = decoded(c["path"])
        assert len(got) == 50
        assert closest(got[0][1], frames) == pytest.approx(c["start_s"], abs=1e-3)
        assert closest(got[-1][1], frames) == pytest.approx(c["end_s"] - 0.04, abs=1e-3)


def test_other_clip_readers_read_by_presentation_time(tmp_path):
    """Report thumbnails and the trainer's reader pick the frames on screen at their times (VFR)."""
    path = vfr_video(tmp_path / "vfr.mp4")
    clips, _ = split(path)
    frames = source_frames(path)
    a = clips[0]  # 10 fps: frames at 0.0, 0.1, ..., 2.9
    with WindowReader(path, a["stream_index"], a["pts_offset_s"]) as reader:
        first, middle, last = clip_thumbnails(reader, a)
        got = read_frames(reader, a["start_s"], [0.0, 0.15, 1.0, 2.95], 120, 160)
    assert closest(first, frames) == pytest.approx(0.0) and closest(middle, frames) == pytest.approx(1.5)
    assert closest(last, frames) == pytest.approx(2.9)
    assert [closest(g, frames) for g in got] == pytest.approx([0.0, 0.1, 1.0, 2.9])


# ---------------------------------------------------------------- colour


def test_full_and_limited_range_give_the_same_luma(tmp_path):
    stage = QualityStage()
    luma = {}
    for full in (False, True):
        path = dim_noisy_picture(tmp_path / f"{'full' if full else 'limited'}.mp4", full)
        clips, video = split(path)
        luma[full] = stage.process_batch(clips)[0]["luma_mean"]
        # And it is the picture's luma as swscale (PyAV's own conversion) reads it, not crushed.
        with av.open(path) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        truth = np.mean([cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY).mean() for i in clips[0]["frame_indices"]]) / 255
        assert luma[full] == pytest.approx(truth, abs=0.005)
    assert luma[False] == pytest.approx(luma[True], abs=0.01)  # before: 0.033 vs 0.010


def test_bt709_is_converted_with_its_own_matrix(tmp_path):
    """A BT.709-tagged HD stream converts to the RGB it was made from (testsrc2's known colours)."""
    path = tmp_path / "hd709.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=1", "-vf", "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p",
           "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv",
           "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", str(path))
    clips, _ = split(path, frames={"count": 1})
    frame, k = clips[0]["frames"][0].astype(float), clips[0]["frame_indices"][0]
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=1", "-vf", f"select=eq(n\\,{k})", "-frames:v", "1", str(tmp_path / "truth.png"))
    with av.open(str(tmp_path / "truth.png")) as c:
        truth = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(float)
    with av.open(str(path)) as c:  # the same frame read with BT.601 maths, as before
        decoded_frame = [f for i, f in enumerate(c.decode(video=0)) if i == k][0]
        as_601 = decoded_frame.reformat(format="rgb24", src_colorspace="ITU601").to_ndarray().astype(float)
    assert np.abs(frame - truth).mean() < 0.5 * np.abs(as_601 - truth).mean()


# ---------------------------------------------------------------- the whole pipeline


@pytest.mark.slow
def test_pipeline_on_real_world_footage(tmp_path, ray_session):
    """Every kind above through `curate run` in mp4 mode with shards: manifests say what is shown
    and when, clip files hold their own frames, nothing good is lost, the truncated file is an error."""
    import json

    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from curate.config import load_config
    from curate.engine import run_pipeline

    src = tmp_path / "src"
    src.mkdir()
    vfr_video(src / "phone_vfr.mp4")
    two_shots(src / "dvd_sar.mp4", size="720x480", rate=25, vf="setsar=32/27")
    rotated(two_shots(tmp_path / "upright.mp4", size="320x240", rate=25), src / "phone_rot90.mp4", 90)
    movie = two_shots(tmp_path / "movie.mp4", size="320x240", rate=30)
    ffmpeg("-f", "lavfi", "-i", "color=c=red:s=160x120:d=1", "-frames:v", "1", str(tmp_path / "thumb.jpg"))
    ffmpeg("-i", str(tmp_path / "thumb.jpg"), "-i", movie, "-map", "0", "-map", "1:v", "-c", "copy", str(src / "drone.mp4"))
    remux(movie, src / "broadcast.ts", "-f", "mpegts")
    ffmpeg("-ss", "1.0", "-i", movie, "-c", "copy", str(src / "trimmed.mp4"))
    data = open(remux(movie, tmp_path / "whole.mkv"), "rb").read()
    (src / "cut.mkv").write_bytes(data[: len(data) // 2])

    out = tmp_path / "out"
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(
        f"input:\n  paths: [{json.dumps(str(src))}]\noutput:\n  path: {out}\n"
        "shots:\n  detector: curate\nclips:\n  min_duration_s: 0.5\n  mode: mp4\nshard:\n  target_size: 1MB\n"
    )
    summary = run_pipeline(load_config(pipe), address=ray_session)
    videos = {os.path.basename(v["source_uri"]): v for v in pads.dataset(out / "videos").to_table().to_pylist()}
    clips = pads.dataset(out / "clips").to_table().to_pylist()
    assert videos["cut.mkv"]["status"] == "error" and "truncated" in videos["cut.mkv"]["error"]
    assert summary.videos_error == 1
    expect = {  # name: (width, height, duration_s, scene starts)
        "phone_vfr.mp4": (320, 240, 6.0, [0, 30]),
        "dvd_sar.mp4": (854, 480, 6.0, [0, 75]),
        "phone_rot90.mp4": (240, 320, 6.0, [0, 75]),
        "drone.mp4": (320, 240, 6.0, [0, 90]),
        "broadcast.ts": (320, 240, 6.0, [0, 90]),
        "trimmed.mp4": (320, 240, 5.0, [0, 60]),
    }
    for name, (w, h, duration, starts) in expect.items():
        v = videos[name]
        assert v["status"] == "ok", (name, v["error"])
        assert (v["width"], v["height"]) == (w, h) and v["duration_s"] == pytest.approx(duration, abs=0.04), name
        assert [s for s, _ in v["scenes"]] == starts, name
    assert videos["phone_vfr.mp4"]["vfr"] and not videos["dvd_sar.mp4"]["vfr"]
    assert videos["drone.mp4"]["stream_index"] == 1
    for c in clips:
        name = os.path.basename(c["source_uri"])
        assert c["path"] != c["source_uri"] and os.path.exists(c["path"]), name
        frames = decoded(c["path"])
        assert len(frames) == c["num_frames"] and frames[0][1].shape[1::-1] == expect[name][:2], name
        assert c["end_s"] <= videos[name]["duration_s"] + 1e-6
    index = pq.read_table(out / "shards" / "index.parquet").to_pylist()
    assert {os.path.basename(i["source_uri"]): i["bucket"].split("/")[1] for i in index}["dvd_sar.mp4"] == "aspect_ratio_16_9"
