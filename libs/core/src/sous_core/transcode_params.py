"""Transcode presets and options: validated by the API on submit and by worker-heavy on start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sous_core.params import MAX_URL_LENGTH, check_fetch_url


@dataclass(frozen=True)
class Preset:
    """One output rendition. Video is never upscaled: ``max_height`` caps the source's."""

    name: str
    description: str
    #: Output container: ``mp4``, ``webm``, ``m4a`` or ``hls`` (a playlist and segments).
    container: str
    video_codec: str | None
    audio_codec: str
    max_height: int | None
    #: Constant rate factor (quality) of the video encoder.
    crf: int | None = None
    audio_bitrate: str = "128k"

    @property
    def needs_video(self) -> bool:
        return self.video_codec is not None


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "mp4-h264-1080p", "MP4, H.264 up to 1080p, AAC audio", "mp4", "libx264", "aac", 1080, 23
        ),
        Preset(
            "mp4-h264-720p", "MP4, H.264 up to 720p, AAC audio", "mp4", "libx264", "aac", 720, 23
        ),
        Preset(
            "mp4-h264-480p", "MP4, H.264 up to 480p, AAC audio", "mp4", "libx264", "aac", 480, 24
        ),
        Preset(
            "webm-vp9-720p",
            "WebM, VP9 up to 720p, Opus audio",
            "webm",
            "libvpx-vp9",
            "libopus",
            720,
            33,
        ),
        Preset("audio-aac", "Audio only, AAC in an M4A file", "m4a", None, "aac", None),
        Preset(
            "hls-720p",
            "HLS: H.264 up to 720p + AAC in 4-second segments with an m3u8 playlist",
            "hls",
            "libx264",
            "aac",
            720,
            23,
        ),
    )
}

PresetName = Literal[
    "mp4-h264-1080p", "mp4-h264-720p", "mp4-h264-480p", "webm-vp9-720p", "audio-aac", "hls-720p"
]

#: Longest trim or thumbnail offset accepted, in seconds (a day).
MAX_SECONDS = 24 * 3600.0


class TranscodeOptions(BaseModel):
    """What to make of the input: a preset, optionally a thumbnail and a trim."""

    model_config = ConfigDict(extra="forbid")

    preset: PresetName = Field(description="The output rendition; `GET /v1/presets` lists them.")
    thumbnail_at: float | None = Field(
        default=None,
        ge=0,
        le=MAX_SECONDS,
        description="Also make a JPEG thumbnail of the frame at this second of the output.",
    )
    start: float | None = Field(
        default=None, ge=0, le=MAX_SECONDS, description="Trim: start at this second of the input."
    )
    duration: float | None = Field(
        default=None, gt=0, le=MAX_SECONDS, description="Trim: keep this many seconds."
    )

    @model_validator(mode="after")
    def _thumbnail_needs_video(self) -> TranscodeOptions:
        if self.thumbnail_at is not None and not PRESETS[self.preset].needs_video:
            raise ValueError(f"preset {self.preset} has no video, so it cannot make a thumbnail")
        return self

    @property
    def spec(self) -> Preset:
        return PRESETS[self.preset]


class UploadSource(BaseModel):
    """A file uploaded to the API, waiting in the storage's uploads folder."""

    model_config = ConfigDict(extra="forbid")

    upload: str = Field(pattern=r"^[0-9a-f]{32}$")
    filename: str = Field(default="", max_length=255)
    size_bytes: int = Field(ge=0)


class UrlSource(BaseModel):
    """A URL the worker downloads, under the same address rules as fetches."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=MAX_URL_LENGTH)

    @field_validator("url")
    @classmethod
    def _valid_url(cls, url: str) -> str:
        return check_fetch_url(url)


class TranscodeParams(BaseModel):
    """A transcode job's parameters: where the input is, and what to make of it."""

    model_config = ConfigDict(extra="forbid")

    source: UploadSource | UrlSource
    options: TranscodeOptions
