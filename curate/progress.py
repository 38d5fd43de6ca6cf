"""What a run shows while it goes, and where Ray's own output goes instead.

On a terminal, one live display (rich): videos done of total, clips kept and filtered, videos per
second and the time left, and with `--stage-rates` each stage's clips per second per worker.
Elsewhere (CI, `ray job submit`, a log file), a plain line per event: the listing, each committed
manifest part, each failed video, the end.

`quiet_ray` sends everything else written to the process's stderr (Ray's log lines, its C++
warnings, Ray Data's execution messages) to a log file, unless `--verbose`: Ray writes some of it
from C++, so the file descriptor itself is redirected, and curate's own output keeps the original.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Iterator


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """A run's progress: `listing` as sources are listed, `update` as the committer counts,
    `failed` for each failed video, `close` at the end. Live on a terminal, else plain lines."""

    def __init__(self, echo=print, live: bool = False, stage_rates: bool = False, stream=None):
        self.echo = echo
        self.stage_rates = stage_rates
        self.total = 0  # videos to process, as listed so far
        self.listing_done = False
        self.started: float | None = None  # when the workers got the first videos: rates count from there
        self.committed = 0
        self._live = None
        if live:
            from rich.console import Console, Group
            from rich.live import Live
            from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn
            from rich.text import Text

            self._bar = RichProgress(TextColumn("[bold]curate"), BarColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
            self._task = self._bar.add_task("listing sources", total=None)
            self._stages = Text("", style="dim")
            # stdout (curate's own lines) prints above the display; stderr is Ray's, sent to its log.
            self._live = Live(Group(self._bar, self._stages) if stage_rates else self._bar,
                              console=Console(file=stream or sys.stderr), redirect_stdout=True, redirect_stderr=False)
            self._live.start()

    def listing(self, inputs: int, skipped: int, retried: int, done: bool) -> None:
        self.total, self.listing_done = inputs - skipped, done
        more = "" if done else " so far (listing goes on)"
        again = f" ({retried} failed before: retried)" if retried else ""
        line = f"{inputs} inputs{more}, {skipped} already done, {inputs - skipped} to process{again}"
        if self._live is None:
            self.echo(f"curate: {line}")
        else:
            self._live.console.print(f"curate: {line}", markup=False, highlight=False)
            self._bar.update(self._task, total=self.total if done else None, description="starting the workers")

    def working(self) -> None:
        """The first videos went to the workers (Ray is up): videos per second count from here, so a
        short run's first results, which arrive all at once, do not make up a rate."""
        self.started = self.started or time.perf_counter()

    def update(self, counts, busy: dict) -> None:
        self.working()
        elapsed = time.perf_counter() - self.started
        rate = counts.videos / elapsed if elapsed > 0 else 0.0
        left = self.total - counts.videos
        eta = f"{_duration(left / rate)} left" if rate > 0 and self.listing_done and left > 0 else ""
        text = (f"videos {counts.videos}/{self.total}{'+' if not self.listing_done else ''} ({counts.errors} failed) · "
                f"clips {counts.kept} kept, {counts.clips - counts.kept} filtered · {rate:.2f} videos/s" + (f" · {eta}" if eta else ""))
        if self._live is not None:
            self._bar.update(self._task, completed=counts.videos, description=text)
            self._stages.plain = stage_rates(busy)
            return
        if counts.committed_videos > self.committed:  # a manifest part was committed: one line
            self.committed = counts.committed_videos
            self.echo(f"curate: {text}" + (f" | {stage_rates(busy)}" if self.stage_rates else ""))

    def failed(self, uri: str, error: str) -> None:
        line = f"curate: failed: {uri}: {error}"
        if self._live is None:
            self.echo(line)
        else:
            self._live.console.print(line, markup=False, highlight=False)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def stage_rates(busy: dict) -> str:
    """Per stage: clips (frames for split) per second of its workers' busy time."""
    parts = []
    for name, d in busy.items():
        secs = d["busy_s"] or float("nan")
        if name == "split":
            parts.append(f"split {d['frames'] / secs:.0f} frames/s")
        else:
            parts.append(f"{name} {d['clips'] / secs:.1f} clips/s")
    return "per worker: " + ", ".join(parts) if parts else ""


@contextlib.contextmanager
def quiet_ray(log_path: str) -> Iterator[io.TextIOBase]:
    """Send the process's stderr (fd 2, and so sys.stderr: Ray's Python and C++ log lines) to
    `log_path` while the block runs; yields a stream on the original stderr for curate's progress.
    Errors raised out of the block are reported after it, on the original stderr. A log that
    stayed empty (nothing started Ray) is removed, and its folder if that leaves it empty."""
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(log_path, "ab") as log, io.TextIOWrapper(os.fdopen(os.dup(saved), "wb", buffering=0), write_through=True) as original:
            os.dup2(log.fileno(), 2)
            try:
                yield original
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
    finally:
        if not os.path.getsize(log_path):
            os.remove(log_path)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(os.path.abspath(log_path)))
