"""Run one ffmpeg process: report progress, stop it on cancel or past the time limit."""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO

from sous_core.errors import JobCancelled, PermanentJobError
from sous_worker_heavy.media.probe import format_seconds

#: Linux prctl option: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _die_with_parent() -> None:
    """In ffmpeg, between fork and exec: get SIGKILL if the worker process dies.

    A pool child killed by its hard time limit or the OOM killer must not leave an
    orphaned ffmpeg burning a core. Only calls into the C library loaded beforehand.
    """
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


#: ``on_progress(percent, eta_seconds)``: percent never decreases; the ETA is unknown at first.
ProgressCallback = Callable[[float, float | None], None]

#: Seconds between checks of ``should_stop`` and of the time limit.
POLL_SECONDS = 0.5

#: Least seconds between two progress reports.
PROGRESS_INTERVAL_SECONDS = 1.0

#: Highest percent reported while ffmpeg runs; 100 is reported once the job is done.
RUNNING_PERCENT_CAP = 99.0

#: Seconds ffmpeg gets to exit after SIGTERM before it is killed.
TERMINATE_GRACE_SECONDS = 3.0

#: Lines of ffmpeg's stderr kept for the error message.
STDERR_LINES_KEPT = 30

#: Lines of stderr quoted in an ``ffmpeg_failed`` message.
STDERR_LINES_QUOTED = 5


@dataclass(frozen=True)
class TimeLimit:
    """The wall-clock budget of one transcode (every ffmpeg run of it shares the deadline)."""

    seconds: float
    #: Seconds of media the limit was computed for (named in the error message).
    media_seconds: float
    #: ``time.monotonic()`` when the transcode started.
    started: float

    @property
    def deadline(self) -> float:
        return self.started + self.seconds

    def error(self) -> PermanentJobError:
        return PermanentJobError(
            "time_limit",
            f"The transcode took longer than {format_seconds(self.seconds)} seconds "
            f"(the limit for a {format_seconds(self.media_seconds)}-second input) "
            "and was stopped.",
        )


class _ProgressReader:
    """Reads ``-progress pipe:1`` output (``key=value`` lines) on a thread."""

    def __init__(self, stream: IO[str]) -> None:
        self.out_time_seconds = 0.0
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            key, _, value = line.strip().partition("=")
            # out_time_ms is in microseconds too (a long-standing ffmpeg quirk).
            if key in ("out_time_us", "out_time_ms"):
                try:
                    seconds = int(value) / 1_000_000
                except ValueError:  # "N/A" before the first frame
                    continue
                self.out_time_seconds = max(self.out_time_seconds, seconds)

    def join(self) -> None:
        self._thread.join(timeout=TERMINATE_GRACE_SECONDS)


class _StderrReader:
    """Keeps the last lines of stderr, reading on a thread so the pipe never fills up."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_KEPT)
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            if line.strip():
                self.lines.append(line.strip())

    def join(self) -> None:
        self._thread.join(timeout=TERMINATE_GRACE_SECONDS)


class _Reporter:
    """Turns ffmpeg's position into throttled, monotonic ``on_progress`` calls."""

    def __init__(self, on_progress: ProgressCallback | None, media_seconds: float) -> None:
        self._on_progress = on_progress
        self._media_seconds = media_seconds
        self._started = time.monotonic()
        self._last_report = float("-inf")
        self._last_percent = 0.0

    def update(self, out_time_seconds: float) -> None:
        now = time.monotonic()
        if self._on_progress is None or out_time_seconds <= 0:
            return
        if now - self._last_report < PROGRESS_INTERVAL_SECONDS:
            return
        fraction = min(out_time_seconds / self._media_seconds, 1.0)
        percent = max(self._last_percent, round(min(fraction * 100, RUNNING_PERCENT_CAP), 1))
        elapsed = now - self._started
        eta = round(elapsed * (1 - fraction) / fraction, 1) if fraction > 0 else None
        self._last_report, self._last_percent = now, percent
        self._on_progress(percent, eta)


def run_ffmpeg(
    command: Sequence[str],
    *,
    media_seconds: float,
    time_limit: TimeLimit,
    should_stop: Callable[[], bool],
    on_progress: ProgressCallback | None = None,
) -> None:
    """Run ``command`` (never through a shell) until it exits; no ffmpeg outlives this call.

    Raises ``JobCancelled`` when ``should_stop()`` turns true, ``PermanentJobError`` with
    code ``time_limit`` past the deadline and ``ffmpeg_failed`` when ffmpeg exits non-zero.
    """
    reporter = _Reporter(on_progress, media_seconds)
    process = subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        preexec_fn=_die_with_parent,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    progress = _ProgressReader(process.stdout)
    stderr = _StderrReader(process.stderr)
    try:
        while True:
            try:
                returncode = process.wait(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                pass
            if should_stop():
                raise JobCancelled()
            if time.monotonic() > time_limit.deadline:
                raise time_limit.error()
            reporter.update(progress.out_time_seconds)
    finally:
        if process.poll() is None:
            _terminate(process)
        progress.join()
        stderr.join()
        process.stdout.close()
        process.stderr.close()
    if returncode != 0:
        raise PermanentJobError("ffmpeg_failed", _failure_message(returncode, stderr.lines))


def _terminate(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=TERMINATE_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _failure_message(returncode: int, lines: collections.deque[str]) -> str:
    quoted = list(lines)[-STDERR_LINES_QUOTED:]
    how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited with {returncode}"
    if not quoted:
        return f"ffmpeg {how} without an error message."
    return f"ffmpeg {how}: " + " | ".join(quoted)
