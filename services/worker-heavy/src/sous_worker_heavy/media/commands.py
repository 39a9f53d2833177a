"""ffmpeg command lines for a preset's rendition and for a thumbnail, built with ffmpeg-python."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ffmpeg

from sous_core.transcode_params import Preset
from sous_worker_heavy.media.probe import INPUT_FORMATS, OUTPUT_FORMATS

#: The ffmpeg executable.
FFMPEG = "ffmpeg"

#: Before every command: no prompts, no banner, overwrite, errors only on stderr, and
#: machine-readable progress on stdout.
GLOBAL_ARGS = ("-hide_banner", "-nostdin", "-y", "-nostats", "-v", "error", "-progress", "pipe:1")

#: libx264 speed/size trade-off (``medium`` is x264's default).
X264_PRESET = "medium"

#: libvpx-vp9 speed: ``good`` with ``cpu-used`` 4 is several times faster than the default.
VP9_OPTIONS: dict[str, Any] = {"b:v": 0, "deadline": "good", "cpu-used": 4, "row-mt": 1}

#: Seconds of media in each HLS segment.
HLS_SEGMENT_SECONDS = 4

HLS_PLAYLIST = "index.m3u8"
HLS_SEGMENT_PATTERN = "seg_%03d.ts"

#: ffmpeg muxer of each preset container (``m4a`` is the mp4 family's ``ipod`` muxer).
MUXERS = {"mp4": "mp4", "webm": "webm", "m4a": "ipod", "hls": "hls"}


def transcode_command(
    input_path: Path,
    preset: Preset,
    target: Path,
    *,
    start: float | None,
    duration: float | None,
    threads: int,
) -> list[str]:
    """The ffmpeg command making ``preset`` of ``input_path`` at ``target``.

    For HLS ``target`` is the playlist; segments go next to it. The muxer is named
    explicitly, so ``target`` may have any (temporary) name.
    """
    trim: dict[str, Any] = {}
    if start:
        trim["ss"] = start
    if duration is not None:
        trim["t"] = duration
    source = ffmpeg.input(
        str(input_path.resolve()),
        protocol_whitelist="file",
        format_whitelist=INPUT_FORMATS,
        **trim,
    )
    options: dict[str, Any] = {
        "c:a": preset.audio_codec,
        "b:a": preset.audio_bitrate,
        "threads": threads,
        "f": MUXERS[preset.container],
    }
    if preset.video_codec is None:
        streams = [source["a:0"]]
        options["vn"] = None
    else:
        streams = [source["v:0"], source["a:0?"]]
        options.update(_video_options(preset))
    if preset.container in ("mp4", "m4a"):
        options["movflags"] = "+faststart"
    if preset.container == "hls":
        options.update(
            hls_time=HLS_SEGMENT_SECONDS,
            hls_playlist_type="vod",
            hls_segment_filename=str(target.parent / HLS_SEGMENT_PATTERN),
            # A key frame at each segment boundary, so segments are 4 s whatever the source.
            force_key_frames=f"expr:gte(t,n_forced*{HLS_SEGMENT_SECONDS})",
            # The muxer opens each segment file itself; keep it to local files too.
            protocol_whitelist="file",
        )
    output = ffmpeg.output(*streams, str(target), **options)
    return [FFMPEG, *GLOBAL_ARGS, *ffmpeg.get_args(output)]


def thumbnail_command(source: Path, at: float, target: Path, *, threads: int) -> list[str]:
    """The ffmpeg command writing the frame at second ``at`` of our own output as a JPEG."""
    stream = ffmpeg.input(
        str(source.resolve()), ss=at, protocol_whitelist="file", format_whitelist=OUTPUT_FORMATS
    )
    output = ffmpeg.output(
        stream["v:0"],
        str(target),
        f="image2",
        update=1,
        threads=threads,
        **{"frames:v": 1, "q:v": 3},
    )
    return [FFMPEG, *GLOBAL_ARGS, *ffmpeg.get_args(output)]


def _video_options(preset: Preset) -> dict[str, Any]:
    assert preset.max_height is not None
    # Never upscale; -2 keeps the aspect ratio with an even width, and the height is
    # rounded down to even because 4:2:0 encoders need even dimensions.
    height = f"trunc(min(ih\\,{preset.max_height})/2)*2"
    options: dict[str, Any] = {
        "c:v": preset.video_codec,
        "crf": preset.crf,
        "pix_fmt": "yuv420p",
        "vf": f"scale=-2:{height}",
    }
    if preset.video_codec == "libx264":
        options["preset"] = X264_PRESET
    elif preset.video_codec == "libvpx-vp9":
        options.update(VP9_OPTIONS)
    return options
