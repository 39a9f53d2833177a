"""Transcoding with real ffmpeg: every preset, trim, thumbnail, progress and refused inputs."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sous_core.errors import PermanentJobError
from sous_core.transcode_params import TranscodeOptions
from sous_worker_heavy.media import MediaLimits, TranscodeOutcome, transcode

Streams = Callable[[Path], list[dict[str, Any]]]


def run(
    input_path: Path,
    work_dir: Path,
    limits: MediaLimits,
    progress: list[tuple[float, float, float | None]] | None = None,
    **options: Any,
) -> TranscodeOutcome:
    def on_progress(percent: float, eta: float | None) -> None:
        if progress is not None:
            progress.append((time.monotonic(), percent, eta))

    return transcode(
        input_path,
        TranscodeOptions(**options),
        work_dir,
        limits=limits,
        threads=2,
        on_progress=on_progress,
        should_stop=lambda: False,
    )


def codecs(streams: list[dict[str, Any]]) -> dict[str, str]:
    return {stream["codec_type"]: stream["codec_name"] for stream in streams}


def test_mp4_is_h264_and_aac_and_never_upscaled(
    clip: Path, tmp_path: Path, limits: MediaLimits, streams: Streams
) -> None:
    outcome = run(clip, tmp_path, limits, preset="mp4-h264-720p")

    assert outcome.output == tmp_path / "output.mp4"
    assert codecs(streams(outcome.output)) == {"video": "h264", "audio": "aac"}
    output = outcome.result["output"]
    assert (output["width"], output["height"]) == (640, 360)
    assert output["duration"] == pytest.approx(3.0, abs=0.1)
    assert output["size_bytes"] == outcome.output.stat().st_size
    assert len(output["sha256"]) == 64
    assert outcome.result["input"]["video_codec"] == "h264"
    assert outcome.result["speed"] > 0
    assert outcome.thumbnail is None
    # faststart: the index comes before the media data.
    data = outcome.output.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["output.mp4"]


def test_mp4_height_is_capped_and_even(
    silent_odd_clip: Path, tmp_path: Path, limits: MediaLimits, streams: Streams
) -> None:
    outcome = run(silent_odd_clip, tmp_path, limits, preset="mp4-h264-480p")

    (video,) = streams(outcome.output)  # no audio in, none out, and no error
    assert video["height"] == 360
    assert video["width"] % 2 == 0


def test_webm_is_vp9_and_opus(
    clip: Path, tmp_path: Path, limits: MediaLimits, streams: Streams
) -> None:
    outcome = run(clip, tmp_path, limits, preset="webm-vp9-720p")

    assert outcome.output == tmp_path / "output.webm"
    assert codecs(streams(outcome.output)) == {"video": "vp9", "audio": "opus"}


def test_audio_aac_has_no_video(
    clip: Path, tmp_path: Path, limits: MediaLimits, streams: Streams
) -> None:
    outcome = run(clip, tmp_path, limits, preset="audio-aac")

    assert outcome.output == tmp_path / "output.m4a"
    assert codecs(streams(outcome.output)) == {"audio": "aac"}
    assert outcome.result["output"]["video_codec"] is None


def test_hls_playlist_lists_four_second_segments_that_exist(
    nine_second_clip: Path, tmp_path: Path, limits: MediaLimits, streams: Streams
) -> None:
    outcome = run(nine_second_clip, tmp_path, limits, preset="hls-720p")

    assert outcome.output == tmp_path / "hls"
    playlist = (outcome.output / "index.m3u8").read_text().splitlines()
    assert playlist[0] == "#EXTM3U"
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in playlist
    assert playlist[-1] == "#EXT-X-ENDLIST"
    segments = [line for line in playlist if line and not line.startswith("#")]
    assert segments == ["seg_000.ts", "seg_001.ts", "seg_002.ts"]
    lengths = [float(line[8:].rstrip(",")) for line in playlist if line.startswith("#EXTINF:")]
    assert lengths == pytest.approx([4.0, 4.0, 1.0], abs=0.1)
    for segment in segments:
        assert codecs(streams(outcome.output / segment)) == {"video": "h264", "audio": "aac"}
    output = outcome.result["output"]
    assert output["files"] == ["index.m3u8", *segments]
    assert output["duration"] == pytest.approx(9.0, abs=0.1)
    assert output["size_bytes"] == sum(path.stat().st_size for path in outcome.output.iterdir())


def test_rerun_in_the_same_work_dir_replaces_the_output(
    nine_second_clip: Path, tmp_path: Path, limits: MediaLimits
) -> None:
    run(nine_second_clip, tmp_path, limits, preset="hls-720p", thumbnail_at=1)

    outcome = run(nine_second_clip, tmp_path, limits, preset="hls-720p", duration=3)

    assert sorted(path.name for path in outcome.output.iterdir()) == ["index.m3u8", "seg_000.ts"]
    assert outcome.thumbnail is None
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hls"]


def test_trim_and_thumbnail(
    nine_second_clip: Path, tmp_path: Path, limits: MediaLimits, streams: Streams
) -> None:
    outcome = run(
        nine_second_clip,
        tmp_path,
        limits,
        preset="mp4-h264-480p",
        start=2,
        duration=3,
        thumbnail_at=1.5,
    )

    assert outcome.result["output"]["duration"] == pytest.approx(3.0, abs=0.1)
    assert outcome.result["trim"] == {"start": 2, "duration": 3}
    assert outcome.thumbnail == tmp_path / "thumbnail.jpg"
    assert outcome.thumbnail.read_bytes()[:3] == b"\xff\xd8\xff"
    (image,) = streams(outcome.thumbnail)
    assert (image["width"], image["height"]) == (320, 180)
    assert outcome.result["thumbnail"] == {"file": "thumbnail.jpg", "at": 1.5}


def test_thumbnail_past_the_end_is_taken_near_the_end(
    clip: Path, tmp_path: Path, limits: MediaLimits
) -> None:
    outcome = run(clip, tmp_path, limits, preset="mp4-h264-480p", duration=2, thumbnail_at=60)

    assert outcome.thumbnail is not None
    assert outcome.thumbnail.stat().st_size > 0
    assert 1.5 < outcome.result["thumbnail"]["at"] < 2.0


def test_progress_is_throttled_monotonic_and_ends_at_100(
    long_clip: Path, tmp_path: Path, limits: MediaLimits, streams: Streams
) -> None:
    progress: list[tuple[float, float, float | None]] = []

    outcome = run(long_clip, tmp_path, limits, progress, preset="mp4-h264-480p")

    (video,) = [stream for stream in streams(outcome.output) if stream["codec_type"] == "video"]
    assert (video["width"], video["height"]) == (854, 480)
    percents = [percent for _, percent, _ in progress]
    assert len(percents) >= 2
    assert percents == sorted(percents)
    assert percents[-1] == 100.0
    assert all(0 < percent < 100 for percent in percents[:-1])
    running = [at for at, percent, _ in progress if percent < 100]
    assert all(later - earlier >= 0.9 for earlier, later in itertools.pairwise(running))
    assert all(eta is None or eta >= 0 for _, _, eta in progress)


@pytest.mark.parametrize(
    ("preset", "code"), [("mp4-h264-720p", "no_video_stream"), ("hls-720p", "no_video_stream")]
)
def test_audio_only_input_is_refused_for_video_presets(
    audio_clip: Path, tmp_path: Path, limits: MediaLimits, preset: str, code: str
) -> None:
    with pytest.raises(PermanentJobError) as caught:
        run(audio_clip, tmp_path, limits, preset=preset)

    assert caught.value.code == code
    assert "no video stream" in caught.value.message
    assert list(tmp_path.iterdir()) == []


def test_silent_input_is_refused_for_audio_aac(
    silent_odd_clip: Path, tmp_path: Path, limits: MediaLimits
) -> None:
    with pytest.raises(PermanentJobError) as caught:
        run(silent_odd_clip, tmp_path, limits, preset="audio-aac")

    assert caught.value.code == "no_audio_stream"


def test_trim_starting_after_the_end_is_refused(
    clip: Path, tmp_path: Path, limits: MediaLimits
) -> None:
    with pytest.raises(PermanentJobError) as caught:
        run(clip, tmp_path, limits, preset="audio-aac", start=5)

    assert caught.value.code == "trim_out_of_range"


def test_truncated_input_with_its_index_first_is_refused_after_encoding(
    faststart_clip: Path, tmp_path: Path, limits: MediaLimits
) -> None:
    upload = tmp_path / "upload.mp4"
    upload.write_bytes(faststart_clip.read_bytes()[: faststart_clip.stat().st_size // 3])
    work_dir = tmp_path / "work"

    with pytest.raises(PermanentJobError) as caught:
        run(upload, work_dir, limits, preset="mp4-h264-480p")

    assert caught.value.code == "not_media"
    assert "truncated" in caught.value.message
    assert list(work_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("limit", "value", "code"),
    [
        ("max_duration", 2.0, "input_too_long"),
        ("max_dimension", 320, "input_too_large"),
        ("max_file_bytes", 10_000, "input_too_large"),
    ],
)
def test_input_over_a_limit_is_refused(
    clip: Path, tmp_path: Path, limits: MediaLimits, limit: str, value: float, code: str
) -> None:
    tight = MediaLimits(**{**limits.__dict__, limit: value})

    with pytest.raises(PermanentJobError) as caught:
        run(clip, tmp_path, tight, preset="mp4-h264-480p")

    assert caught.value.code == code
    assert "the limit is" in caught.value.message
    assert list(tmp_path.iterdir()) == []


def test_text_file_is_refused(tmp_path: Path, limits: MediaLimits) -> None:
    upload = tmp_path / "upload.mp4"
    upload.write_text("not a video\n")

    with pytest.raises(PermanentJobError) as caught:
        run(upload, tmp_path, limits, preset="mp4-h264-480p")

    assert caught.value.code == "not_media"
    assert [path.name for path in tmp_path.iterdir()] == ["upload.mp4"]
