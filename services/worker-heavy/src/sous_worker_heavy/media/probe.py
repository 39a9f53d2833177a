"""Read an input's duration, size and streams with ffprobe, and enforce the input limits."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sous_core.errors import PermanentJobError

#: The ffprobe executable.
FFPROBE = "ffprobe"

#: Seconds ffprobe may take to read a file before the file is refused (a sane file takes < 1 s).
PROBE_TIMEOUT_SECONDS = 30.0

#: Lines of ffprobe's error output quoted in a ``not_media`` message.
PROBE_REASON_LINES = 2

#: Demuxers an uploaded input may use. Playlists (hls, concat), image sequences and ``tty``
#: (which reads any text file as "video") are left out, so nothing can make ffmpeg open
#: another file.
INPUT_FORMATS = (
    "mov,matroska,webm,avi,flv,mpegts,mpeg,ogg,wav,mp3,aac,flac,asf,aiff,caf,mxf,dv,"
    "ac3,eac3,amr,w64,ivf,wv"
)

#: Demuxers for reading back what we wrote ourselves, HLS playlist included.
OUTPUT_FORMATS = "mov,matroska,webm,hls,mpegts"

_LOG_PREFIX = re.compile(r"^\[[^\]]* @ 0x[0-9a-f]+\] ")


@dataclass(frozen=True)
class MediaLimits:
    """What an input may be, and how long its transcode may take.

    The time limit is ``max(min_time_limit, time_factor * seconds of media to process)``.
    """

    #: Longest input accepted, in seconds.
    max_duration: float
    #: Widest or tallest video accepted, in pixels.
    max_dimension: int
    #: Largest input file accepted, in bytes.
    max_file_bytes: int
    #: Seconds of encoding allowed per second of media.
    time_factor: float
    #: Seconds of encoding always allowed, however short the media.
    min_time_limit: float


@dataclass(frozen=True)
class MediaInfo:
    """What ffprobe found: codecs are ``None`` when the file has no such stream."""

    duration: float
    width: int | None
    height: int | None
    video_codec: str | None
    audio_codec: str | None
    bitrate: int | None
    size_bytes: int
    format_name: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "duration": round(self.duration, 3),
            "width": self.width,
            "height": self.height,
            "video_codec": self.video_codec,
            "audio_codec": self.audio_codec,
            "bitrate": self.bitrate,
            "size_bytes": self.size_bytes,
            "format_name": self.format_name,
        }


def probe(path: Path, limits: MediaLimits | None = None) -> MediaInfo:
    """Probe an uploaded file; with ``limits``, refuse one too long, too large or too big.

    >>> probe(Path("upload.mp4")).video_codec
    'h264'

    Raises ``PermanentJobError`` with code ``not_media``, ``input_too_long`` or
    ``input_too_large``.
    """
    size = path.stat().st_size
    if size == 0:
        raise _not_media("the file is empty")
    if limits is not None and size > limits.max_file_bytes:
        raise PermanentJobError(
            "input_too_large",
            f"The uploaded file is {size:,} bytes; the limit is {limits.max_file_bytes:,} bytes.",
        )
    info = read_media_info(path, INPUT_FORMATS)
    if limits is not None:
        _check_duration_and_dimensions(info, limits)
    return info


def _check_duration_and_dimensions(info: MediaInfo, limits: MediaLimits) -> None:
    if info.duration > limits.max_duration:
        raise PermanentJobError(
            "input_too_long",
            f"The input is {format_seconds(info.duration)} seconds long; "
            f"the limit is {format_seconds(limits.max_duration)} seconds.",
        )
    if max(info.width or 0, info.height or 0) > limits.max_dimension:
        raise PermanentJobError(
            "input_too_large",
            f"The video is {info.width}x{info.height} pixels; the limit is "
            f"{limits.max_dimension} pixels in width and height.",
        )


def read_media_info(path: Path, formats: str) -> MediaInfo:
    """Run ffprobe on ``path``, letting it use only the local file and the given demuxers."""
    command = [
        FFPROBE,
        "-hide_banner",
        "-v",
        "error",
        "-protocol_whitelist",
        "file",
        "-format_whitelist",
        formats,
        "-print_format",
        "json",
        "-show_format",
        "-show_streams",
        "-i",
        str(path.resolve()),
    ]
    try:
        completed = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=PROBE_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise _not_media(
            f"ffprobe did not finish within {format_seconds(PROBE_TIMEOUT_SECONDS)} seconds"
        ) from None
    if completed.returncode != 0:
        raise _not_media(_probe_reason(completed.stderr, path))
    try:
        found = json.loads(completed.stdout)
    except json.JSONDecodeError:
        raise _not_media("ffprobe printed no readable description") from None
    return _media_info(found, path)


def format_seconds(seconds: float) -> str:
    """``12.0`` → ``"12"``, ``2.345`` → ``"2.3"``: seconds as people read them in messages."""
    return f"{seconds:.1f}".removesuffix(".0")


def _media_info(found: dict[str, Any], path: Path) -> MediaInfo:
    streams = found.get("streams") or []
    container = found.get("format") or {}
    video = next(
        (
            stream
            for stream in streams
            if stream.get("codec_type") == "video"
            # Cover art in an audio file is a one-frame "video" stream, not a video.
            and not (stream.get("disposition") or {}).get("attached_pic")
        ),
        None,
    )
    audio = next((stream for stream in streams if stream.get("codec_type") == "audio"), None)
    if video is None and audio is None:
        raise _not_media("it has no video or audio stream")
    durations = [_number(container.get("duration"))] + [
        _number(stream.get("duration")) for stream in (video, audio) if stream is not None
    ]
    duration = max((value for value in durations if value is not None), default=None)
    if duration is None or duration <= 0:
        raise _not_media("its duration cannot be read")
    bitrate = _number(container.get("bit_rate"))
    return MediaInfo(
        duration=duration,
        width=video.get("width") if video else None,
        height=video.get("height") if video else None,
        video_codec=video.get("codec_name") if video else None,
        audio_codec=audio.get("codec_name") if audio else None,
        bitrate=int(bitrate) if bitrate is not None else None,
        size_bytes=path.stat().st_size,
        format_name=str(container.get("format_name", "")),
    )


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _probe_reason(stderr: str, path: Path) -> str:
    """ffprobe's last lines without log prefixes or our path: ``"moov atom not found; …"``."""
    reasons: list[str] = []
    for line in stderr.splitlines()[-PROBE_REASON_LINES:]:
        # "[mov,mp4,… @ 0x55…] moov atom not found", "/work/…/upload.mp4: Invalid data …"
        reason = _LOG_PREFIX.sub("", line).replace(f"{path.resolve()}: ", "").strip().rstrip(".")
        if reason and reason not in reasons:
            reasons.append(reason)
    return "; ".join(reasons) or "ffprobe could not read it"


def _not_media(reason: str) -> PermanentJobError:
    return PermanentJobError(
        "not_media",
        f"The uploaded file is not a video or audio file ffprobe can read ({reason}).",
    )
