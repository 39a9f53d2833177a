"""Transcode one input to a preset's rendition (and a thumbnail) in a work dir."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sous_core.errors import PermanentJobError
from sous_core.transcode_params import Preset, TranscodeOptions
from sous_worker_heavy.media.commands import HLS_PLAYLIST, thumbnail_command, transcode_command
from sous_worker_heavy.media.probe import (
    OUTPUT_FORMATS,
    MediaInfo,
    MediaLimits,
    format_seconds,
    probe,
    read_media_info,
)
from sous_worker_heavy.media.run import ProgressCallback, TimeLimit, run_ffmpeg

#: Where each container's output lands in the work dir (HLS: a folder).
OUTPUT_NAMES = {"mp4": "output.mp4", "webm": "output.webm", "m4a": "output.m4a", "hls": "hls"}

THUMBNAIL_NAME = "thumbnail.jpg"

#: Added to a name while it is being written; renamed away only on success.
PARTIAL_SUFFIX = ".partial"

#: An output this much shorter than the input promised (seconds, or a fraction of the
#: input when larger) means the input is truncated: ffmpeg stops at the cut with exit code 0.
TRUNCATION_TOLERANCE_SECONDS = 1.0
TRUNCATION_TOLERANCE_FRACTION = 0.1

#: A thumbnail asked for at or past the end is taken this many seconds before the end,
#: where a frame still exists.
THUMBNAIL_END_MARGIN_SECONDS = 0.1


@dataclass(frozen=True)
class TranscodeOutcome:
    """What ``transcode`` made: paths inside the work dir and JSON-ready metadata."""

    #: The file (mp4/webm/m4a), or for HLS the folder holding index.m3u8 and its segments.
    output: Path
    thumbnail: Path | None
    #: ``preset``, ``input`` and ``output`` metadata, ``trim``, ``thumbnail``,
    #: ``encode_seconds`` and ``speed`` (seconds of media per wall second).
    result: dict[str, Any]


def transcode(
    input_path: Path,
    options: TranscodeOptions,
    work_dir: Path,
    *,
    limits: MediaLimits,
    threads: int,
    on_progress: ProgressCallback,
    should_stop: Callable[[], bool],
) -> TranscodeOutcome:
    """Probe ``input_path``, check it against ``limits`` and encode it into ``work_dir``.

    >>> outcome = transcode(Path("in.mov"), TranscodeOptions(preset="mp4-h264-720p"),
    ...                     Path("/tmp/job-1"), limits=limits, threads=2,
    ...                     on_progress=print, should_stop=lambda: False)
    >>> outcome.output
    PosixPath('/tmp/job-1/output.mp4')

    Outputs are written under temporary names and renamed into place only on success;
    on any failure the partial files are removed. Raises ``PermanentJobError`` (bad input,
    limits, ``time_limit``, ``ffmpeg_failed``) or ``JobCancelled``.
    """
    started = time.monotonic()
    preset = options.spec
    work_dir.mkdir(parents=True, exist_ok=True)
    output = work_dir / OUTPUT_NAMES[preset.container]
    partial_output = output.with_name(output.name + PARTIAL_SUFFIX)
    thumbnail = work_dir / THUMBNAIL_NAME
    partial_thumbnail = thumbnail.with_name(thumbnail.name + PARTIAL_SUFFIX)
    _remove(partial_output, partial_thumbnail)  # left by a run that crashed

    source = probe(input_path, limits)
    _require_streams(source, preset)
    media_seconds = _media_seconds(source, options)
    time_limit = TimeLimit(
        seconds=max(limits.min_time_limit, limits.time_factor * media_seconds),
        media_seconds=media_seconds,
        started=started,
    )
    try:
        if preset.container == "hls":
            partial_output.mkdir()
            target = partial_output / HLS_PLAYLIST
        else:
            target = partial_output
        command = transcode_command(
            input_path,
            preset,
            target,
            start=options.start,
            duration=options.duration,
            threads=threads,
        )
        encode_started = time.monotonic()
        run_ffmpeg(
            command,
            media_seconds=media_seconds,
            time_limit=time_limit,
            should_stop=should_stop,
            on_progress=on_progress,
        )
        encode_seconds = time.monotonic() - encode_started
        written = read_media_info(target, OUTPUT_FORMATS)
        _require_complete(written, media_seconds)
        thumbnail_at = None
        if options.thumbnail_at is not None:
            thumbnail_at = min(
                options.thumbnail_at, max(0.0, written.duration - THUMBNAIL_END_MARGIN_SECONDS)
            )
            run_ffmpeg(
                thumbnail_command(target, thumbnail_at, partial_thumbnail, threads=threads),
                media_seconds=written.duration,
                time_limit=time_limit,
                should_stop=should_stop,
            )
            if not partial_thumbnail.is_file() or partial_thumbnail.stat().st_size == 0:
                raise PermanentJobError(
                    "thumbnail_failed",
                    f"ffmpeg found no frame at {format_seconds(thumbnail_at)} s for the thumbnail.",
                )
        output_result = _output_result(preset, written, target, partial_output)
        _put_in_place(partial_output, output)
        if thumbnail_at is None:
            _remove(thumbnail)  # an earlier run's, not this one's
        else:
            os.replace(partial_thumbnail, thumbnail)
    except BaseException:
        _remove(partial_output, partial_thumbnail)
        raise

    result = {
        "preset": preset.name,
        "input": source.as_dict(),
        "output": output_result,
        "trim": (
            {"start": options.start, "duration": options.duration}
            if options.start is not None or options.duration is not None
            else None
        ),
        "thumbnail": (
            {"file": THUMBNAIL_NAME, "at": round(thumbnail_at, 3)}
            if thumbnail_at is not None
            else None
        ),
        "encode_seconds": round(encode_seconds, 3),
        "speed": round(media_seconds / max(encode_seconds, 1e-6), 2),
    }
    on_progress(100.0, 0.0)
    return TranscodeOutcome(
        output=output, thumbnail=thumbnail if thumbnail_at is not None else None, result=result
    )


def _require_streams(source: MediaInfo, preset: Preset) -> None:
    if preset.needs_video and source.video_codec is None:
        raise PermanentJobError(
            "no_video_stream",
            f"The input has no video stream, so it cannot be made into {preset.name}; "
            "use the audio-aac preset for audio files.",
        )
    if not preset.needs_video and source.audio_codec is None:
        raise PermanentJobError(
            "no_audio_stream",
            f"The input has no audio stream, so it cannot be made into {preset.name}.",
        )


def _require_complete(written: MediaInfo, media_seconds: float) -> None:
    tolerance = max(TRUNCATION_TOLERANCE_SECONDS, TRUNCATION_TOLERANCE_FRACTION * media_seconds)
    if written.duration < media_seconds - tolerance:
        raise PermanentJobError(
            "not_media",
            "The uploaded file is truncated or damaged: ffmpeg could read only "
            f"{format_seconds(written.duration)} of the {format_seconds(media_seconds)} seconds "
            "it announces.",
        )


def _media_seconds(source: MediaInfo, options: TranscodeOptions) -> float:
    """Seconds of media the output will hold: the input's, trimmed."""
    start = options.start or 0.0
    if start >= source.duration:
        raise PermanentJobError(
            "trim_out_of_range",
            f"The trim starts at {format_seconds(start)} s, but the input is only "
            f"{format_seconds(source.duration)} seconds long.",
        )
    remaining = source.duration - start
    return min(options.duration, remaining) if options.duration is not None else remaining


def _output_result(
    preset: Preset, written: MediaInfo, target: Path, partial_output: Path
) -> dict[str, Any]:
    result = {"container": preset.container, **written.as_dict(), "sha256": _sha256(target)}
    if partial_output.is_dir():
        files = sorted(path for path in partial_output.iterdir() if path.is_file())
        result["files"] = [path.name for path in files]
        result["size_bytes"] = size = sum(path.stat().st_size for path in files)
        # ffprobe's bitrate of a playlist is the playlist file's; this is the segments'.
        result["bitrate"] = round(size * 8 / written.duration)
    return result


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _put_in_place(partial: Path, final: Path) -> None:
    """Rename ``partial`` to ``final``, replacing an earlier run's output."""
    if final.is_dir():
        shutil.rmtree(final)
    os.replace(partial, final)


def _remove(*paths: Path) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
