"""Probing inputs: what ffprobe reports, and the inputs refused before any encoding."""

from __future__ import annotations

from pathlib import Path

import pytest

from sous_core.errors import PermanentJobError
from sous_worker_heavy.media import MediaLimits, probe


def test_probe_reports_duration_size_and_codecs(clip: Path) -> None:
    info = probe(clip)

    assert info.duration == pytest.approx(3.0, abs=0.1)
    assert (info.width, info.height) == (640, 360)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert info.size_bytes == clip.stat().st_size
    assert info.bitrate is not None
    assert info.bitrate > 0
    assert "mp4" in info.format_name


def test_probe_of_audio_has_no_video(audio_clip: Path) -> None:
    info = probe(audio_clip)

    assert (info.video_codec, info.width, info.height) == (None, None, None)
    assert info.audio_codec == "aac"


def test_probe_accepts_input_within_limits(clip: Path, limits: MediaLimits) -> None:
    assert probe(clip, limits).duration == pytest.approx(3.0, abs=0.1)


def test_should_refuse_a_text_file_named_mp4(tmp_path: Path) -> None:
    fake = tmp_path / "upload.mp4"
    fake.write_text("This is not a video.\n" * 20)

    with pytest.raises(PermanentJobError) as caught:
        probe(fake)

    assert caught.value.code == "not_media"
    assert caught.value.message.startswith(
        "The uploaded file is not a video or audio file ffprobe can read ("
    )
    assert str(tmp_path) not in caught.value.message


def test_should_refuse_a_text_file_even_when_ffmpeg_could_read_it_as_tty(tmp_path: Path) -> None:
    # ffmpeg's tty demuxer turns any text into "video"; it is not on the allowed list.
    fake = tmp_path / "upload.txt"
    fake.write_text("hello\n" * 200)

    with pytest.raises(PermanentJobError) as caught:
        probe(fake)

    assert caught.value.code == "not_media"


def test_should_refuse_a_playlist_that_points_elsewhere(tmp_path: Path) -> None:
    playlist = tmp_path / "upload.m3u8"
    playlist.write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\nhttp://127.0.0.1:9/a.ts\n"
        "#EXTINF:4,\n/etc/hostname\n#EXT-X-ENDLIST\n"
    )

    with pytest.raises(PermanentJobError) as caught:
        probe(playlist)

    assert caught.value.code == "not_media"


def test_should_refuse_a_zero_byte_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.touch()

    with pytest.raises(PermanentJobError) as caught:
        probe(empty)

    assert caught.value.code == "not_media"
    assert "the file is empty" in caught.value.message


def test_should_refuse_an_mp4_cut_before_its_index(clip: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])

    with pytest.raises(PermanentJobError) as caught:
        probe(truncated)

    assert caught.value.code == "not_media"
    assert "moov atom not found" in caught.value.message


def test_should_refuse_input_longer_than_the_limit(clip: Path, limits: MediaLimits) -> None:
    short_limit = MediaLimits(**{**limits.__dict__, "max_duration": 2.0})

    with pytest.raises(PermanentJobError) as caught:
        probe(clip, short_limit)

    assert caught.value.code == "input_too_long"
    assert caught.value.message == "The input is 3 seconds long; the limit is 2 seconds."


def test_should_refuse_video_larger_than_the_limit(clip: Path, limits: MediaLimits) -> None:
    small_limit = MediaLimits(**{**limits.__dict__, "max_dimension": 480})

    with pytest.raises(PermanentJobError) as caught:
        probe(clip, small_limit)

    assert caught.value.code == "input_too_large"
    assert "640x360" in caught.value.message
    assert "480 pixels" in caught.value.message


def test_should_refuse_a_file_bigger_than_the_limit(clip: Path, limits: MediaLimits) -> None:
    tiny_limit = MediaLimits(**{**limits.__dict__, "max_file_bytes": 1000})

    with pytest.raises(PermanentJobError) as caught:
        probe(clip, tiny_limit)

    assert caught.value.code == "input_too_large"
    assert f"{clip.stat().st_size:,} bytes" in caught.value.message
    assert "1,000 bytes" in caught.value.message
