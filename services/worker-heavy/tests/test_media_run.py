"""Running ffmpeg: cancelling, the time limit and failures leave no process or partial file."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from sous_core.errors import JobCancelled, PermanentJobError
from sous_core.transcode_params import TranscodeOptions
from sous_worker_heavy.media import MediaLimits, transcode
from sous_worker_heavy.media.commands import FFMPEG, GLOBAL_ARGS
from sous_worker_heavy.media.run import TimeLimit, run_ffmpeg


def assert_all_exited(processes: list[subprocess.Popen[Any]]) -> None:
    assert processes
    for process in processes:
        assert process.returncode is not None
        assert not Path(f"/proc/{process.pid}").exists()


def test_cancel_stops_ffmpeg_and_removes_partial_files(
    long_clip: Path, tmp_path: Path, limits: MediaLimits, spawned: list[subprocess.Popen[Any]]
) -> None:
    reports: list[float] = []

    with pytest.raises(JobCancelled):
        transcode(
            long_clip,
            TranscodeOptions(preset="webm-vp9-720p", thumbnail_at=1),
            tmp_path,
            limits=limits,
            threads=1,
            on_progress=lambda percent, _eta: reports.append(percent),
            should_stop=lambda: bool(reports),
        )

    # Stopped at the first progress report: ffmpeg was stopped, not left to finish.
    assert len(reports) == 1
    assert spawned[-1].args[0] == FFMPEG
    assert spawned[-1].returncode not in (None, 0)
    assert_all_exited(spawned)
    assert list(tmp_path.iterdir()) == []


def test_time_limit_stops_ffmpeg(
    long_clip: Path, tmp_path: Path, limits: MediaLimits, spawned: list[subprocess.Popen[Any]]
) -> None:
    tight = MediaLimits(**{**limits.__dict__, "time_factor": 0.01, "min_time_limit": 0.5})

    with pytest.raises(PermanentJobError) as caught:
        transcode(
            long_clip,
            TranscodeOptions(preset="webm-vp9-720p"),
            tmp_path,
            limits=tight,
            threads=1,
            on_progress=lambda _percent, _eta: None,
            should_stop=lambda: False,
        )

    assert caught.value.code == "time_limit"
    assert caught.value.message == (
        "The transcode took longer than 0.5 seconds (the limit for a 10-second input) "
        "and was stopped."
    )
    assert_all_exited(spawned)
    assert list(tmp_path.iterdir()) == []


def test_ffmpeg_error_is_reported_with_its_message(
    tmp_path: Path, spawned: list[subprocess.Popen[Any]]
) -> None:
    command = [FFMPEG, *GLOBAL_ARGS, "-i", str(tmp_path / "missing.mp4"), "-f", "null", "-"]

    with pytest.raises(PermanentJobError) as caught:
        run_ffmpeg(
            command,
            media_seconds=1.0,
            time_limit=TimeLimit(seconds=30, media_seconds=1.0, started=time.monotonic()),
            should_stop=lambda: False,
        )

    assert caught.value.code == "ffmpeg_failed"
    assert caught.value.message.startswith("ffmpeg exited with 1: ")
    assert "No such file or directory" in caught.value.message
    assert_all_exited(spawned)


def test_an_error_in_a_callback_still_stops_ffmpeg(
    long_clip: Path, tmp_path: Path, limits: MediaLimits, spawned: list[subprocess.Popen[Any]]
) -> None:
    def broken(_percent: float, _eta: float | None) -> None:
        raise RuntimeError("progress store is down")

    with pytest.raises(RuntimeError, match="progress store is down"):
        transcode(
            long_clip,
            TranscodeOptions(preset="hls-720p"),
            tmp_path,
            limits=limits,
            threads=1,
            on_progress=broken,
            should_stop=lambda: False,
        )

    assert_all_exited(spawned)
    assert list(tmp_path.iterdir()) == []
