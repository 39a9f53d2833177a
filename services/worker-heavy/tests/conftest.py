"""Fixtures of the heavy worker's tests: small media clips made once per session with ffmpeg."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sous_worker_heavy.media import MediaLimits

VIDEO = ("-f", "lavfi", "-i", "testsrc2=size={size}:rate=25")
TONE = ("-f", "lavfi", "-i", "sine=frequency=440")


def _make(path: Path, *args: str) -> Path:
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-y", "-v", "error", *args, str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return path


def _video(size: str) -> tuple[str, ...]:
    return tuple(arg.format(size=size) for arg in VIDEO)


def _h264_clip(path: Path, size: str, seconds: int) -> Path:
    """A ``size`` test pattern with a tone, H.264 + AAC, encoded as fast as possible."""
    return _make(
        path, *_video(size), *TONE, "-t", str(seconds),
        "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
    )  # fmt: skip


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def clip(media_dir: Path) -> Path:
    """3 s of 640x360 H.264 + AAC, moov atom at the end (as ffmpeg writes by default)."""
    return _h264_clip(media_dir / "clip.mp4", "640x360", 3)


@pytest.fixture(scope="session")
def faststart_clip(media_dir: Path, clip: Path) -> Path:
    """``clip`` with the moov atom first, so a truncated copy still probes."""
    return _make(
        media_dir / "faststart.mp4", "-i", str(clip), "-c", "copy", "-movflags", "+faststart"
    )


@pytest.fixture(scope="session")
def nine_second_clip(media_dir: Path) -> Path:
    """9 s of 320x180: enough for three HLS segments, quick to encode."""
    return _h264_clip(media_dir / "nine.mp4", "320x180", 9)


@pytest.fixture(scope="session")
def silent_odd_clip(media_dir: Path) -> Path:
    """1 s of 641x361 video (odd sizes, which ffv1 allows) and no audio stream."""
    return _make(media_dir / "odd.mkv", *_video("641x361"), "-t", "1", "-c:v", "ffv1")


@pytest.fixture(scope="session")
def long_clip(media_dir: Path) -> Path:
    """10 s of 1280x720: takes a few seconds to transcode, for progress and cancel tests."""
    return _h264_clip(media_dir / "long.mp4", "1280x720", 10)


@pytest.fixture(scope="session")
def audio_clip(media_dir: Path) -> Path:
    return _make(media_dir / "tone.m4a", *TONE, "-t", "3", "-c:a", "aac")


@pytest.fixture
def limits() -> MediaLimits:
    return MediaLimits(
        max_duration=600.0,
        max_dimension=4096,
        max_file_bytes=100_000_000,
        time_factor=20.0,
        min_time_limit=120.0,
    )


@pytest.fixture
def streams() -> Callable[[Path], list[dict[str, Any]]]:
    """Read a file's streams with ffprobe directly, independently of the code under test."""

    def read(path: Path) -> list[dict[str, Any]]:
        completed = subprocess.run(
            ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", str(path)],
            capture_output=True,
            check=True,
            text=True,
        )
        return list(json.loads(completed.stdout)["streams"])

    return read


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen[Any]]:
    """Every process the test starts, to check that none is left running."""
    processes: list[subprocess.Popen[Any]] = []

    class RecordingPopen(subprocess.Popen[Any]):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            processes.append(self)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    return processes
