"""Transcode jobs end to end: upload over HTTP, a real prefork worker running ffmpeg, outputs
probed with ffprobe; bad inputs fail cleanly; cancel and SIGKILL mid-transcode."""

from __future__ import annotations

import io
import json
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.stack import Api, Stack, make_stack, wait_for_job, wait_until

pytestmark = pytest.mark.integration

TERMINAL = {"succeeded", "failed", "cancelled"}


def make_clip(path: Path, seconds: float, size: str = "640x360", audio: bool = True) -> Path:
    command = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    command += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25"]
    if audio:
        command += ["-f", "lavfi", "-i", "sine=frequency=440"]
    command += [
        "-t",
        str(seconds),
        "-pix_fmt",
        "yuv420p",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
    ]
    command += ["-c:a", "aac"] if audio else []
    subprocess.run([*command, str(path)], check=True, timeout=120)
    return path


def probe(data: bytes, tmp_path: Path, name: str) -> dict:
    path = tmp_path / name
    path.write_bytes(data)
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_streams",
            "-show_format",
            str(path),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    return json.loads(out)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    text = folder / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    good = make_clip(folder / "clip.mp4", 4)
    truncated = folder / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    empty = folder / "empty.mp4"
    empty.write_bytes(b"")
    audio_only = folder / "tone.m4a"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine", "-t", "3",
         "-c:a", "aac", str(audio_only)],
        check=True,
        timeout=60,
    )  # fmt: skip
    long = make_clip(folder / "long.mp4", 40, size="1280x720")
    return {
        "clip": good,
        "text": text,
        "truncated": truncated,
        "empty": empty,
        "audio_only": audio_only,
        "long": long,
    }


@pytest.fixture(scope="module")
def heavy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Api]]:
    with make_stack(
        tmp_path_factory.mktemp("heavy"), SOUS_HEARTBEAT_INTERVAL="1", SOUS_MAX_RETRIES="0"
    ) as stack:
        stack.start_heavy_worker()
        yield stack, stack.start_api()


@pytest.fixture
def client(heavy: tuple[Stack, Api]) -> Iterator[httpx.Client]:
    stack, api = heavy
    with api.client(stack.create_key("video")) as http:
        http.timeout = httpx.Timeout(60)
        yield http


def upload(client: httpx.Client, path: Path, **options: object) -> dict:
    with path.open("rb") as handle:
        response = client.post(
            "/v1/transcodes",
            files={"file": (path.name, handle, "application/octet-stream")},
            data={"options": json.dumps(options)},
        )
    assert response.status_code == 202, response.text
    return response.json()


def test_an_upload_is_transcoded_with_progress_events_and_a_playable_output(
    client: httpx.Client, clips: dict[str, Path], tmp_path: Path
) -> None:
    job = upload(client, clips["clip"], preset="mp4-h264-720p", thumbnail_at=1)
    events = []
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line.removeprefix("data:").strip()))
    done = events[-1]
    assert done["state"] == "succeeded", done
    progress = [event["progress"] for event in events]
    assert progress == sorted(progress)
    assert progress[-1] == 100

    output = client.get(f"/v1/jobs/{job['id']}/output")
    assert output.status_code == 200
    info = probe(output.content, tmp_path, "out.mp4")
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    audio = [s for s in info["streams"] if s["codec_type"] == "audio"]
    assert video["codec_name"] == "h264"
    assert (video["width"], video["height"]) == (640, 360), "never upscaled"
    assert audio
    assert audio[0]["codec_name"] == "aac"
    assert abs(float(info["format"]["duration"]) - 4) < 0.5
    result = done["result"]
    assert result["output"]["sha256"]
    assert result["speed"] > 0
    thumbnail = client.get(f"/v1/jobs/{job['id']}/thumbnail")
    assert thumbnail.status_code == 200
    assert thumbnail.content[:3] == b"\xff\xd8\xff"


@pytest.mark.parametrize(
    ("preset", "vcodec", "acodec"),
    [
        ("mp4-h264-480p", "h264", "aac"),
        ("mp4-h264-1080p", "h264", "aac"),
        ("webm-vp9-720p", "vp9", "opus"),
        ("audio-aac", None, "aac"),
    ],
)
def test_every_file_preset(
    client: httpx.Client,
    clips: dict[str, Path],
    tmp_path: Path,
    preset: str,
    vcodec: str | None,
    acodec: str,
) -> None:
    job = upload(client, clips["clip"], preset=preset, start=1, duration=2)
    done = wait_for_job(client, job["id"], TERMINAL, timeout=120)
    assert done["state"] == "succeeded", done
    info = probe(client.get(f"/v1/jobs/{job['id']}/output").content, tmp_path, "out")
    codecs = {s["codec_type"]: s["codec_name"] for s in info["streams"]}
    assert codecs.get("video") == vcodec
    assert codecs.get("audio") == acodec
    assert abs(float(info["format"]["duration"]) - 2) < 0.5, "trimmed to two seconds"
    if vcodec == "h264":
        video = next(s for s in info["streams"] if s["codec_type"] == "video")
        assert video["height"] == min(360, int(preset.rsplit("-", 1)[1].rstrip("p")))
        assert video["width"] % 2 == 0
        assert video["height"] % 2 == 0


def test_hls_preset_gives_a_playlist_and_its_segments(
    client: httpx.Client, clips: dict[str, Path]
) -> None:
    job = upload(client, clips["clip"], preset="hls-720p")
    done = wait_for_job(client, job["id"], TERMINAL, timeout=120)
    assert done["state"] == "succeeded", done
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/v1/jobs/{job['id']}/output").content))
    names = set(archive.namelist())
    playlist = archive.read("index.m3u8").decode()
    assert playlist.startswith("#EXTM3U")
    assert "#EXT-X-ENDLIST" in playlist
    segments = [line for line in playlist.splitlines() if line and not line.startswith("#")]
    assert segments
    assert set(segments) <= names
    one = client.get(f"/v1/jobs/{job['id']}/output/{segments[0]}")
    assert one.status_code == 200
    assert one.content == archive.read(segments[0])


@pytest.mark.parametrize(
    ("clip", "preset", "code"),
    [
        ("text", "mp4-h264-720p", "not_media"),
        ("truncated", "mp4-h264-720p", "not_media"),
        ("empty", "mp4-h264-720p", "not_media"),
        ("audio_only", "mp4-h264-720p", "no_video_stream"),
    ],
)
def test_bad_inputs_fail_cleanly_and_the_worker_lives_on(
    client: httpx.Client, clips: dict[str, Path], clip: str, preset: str, code: str
) -> None:
    job = upload(client, clips[clip], preset=preset)
    done = wait_for_job(client, job["id"], TERMINAL, timeout=60)
    assert done["state"] == "failed"
    assert done["error"]["code"] == code, done["error"]
    assert done["attempts"] == 1, "a bad input is not retried"
    assert len(done["error"]["message"]) > 20
    # The pool still serves: a good job right after succeeds.
    good = upload(client, clips["clip"], preset="audio-aac")
    assert wait_for_job(client, good["id"], TERMINAL, timeout=60)["state"] == "succeeded"


def ffmpeg_pids(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith("ffmpeg") and marker in cmdline:
            pids.append(int(entry.name))
    return pids


def test_cancelling_a_running_transcode_stops_ffmpeg_and_cleans_up(
    heavy: tuple[Stack, Api], client: httpx.Client, clips: dict[str, Path]
) -> None:
    stack, _ = heavy
    job = upload(client, clips["long"], preset="webm-vp9-720p")
    wait_until(lambda: client.get(f"/v1/jobs/{job['id']}").json()["progress"] > 0, 60, "progress")
    assert ffmpeg_pids(job["id"]), "ffmpeg runs for the job"
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    done = wait_for_job(client, job["id"], TERMINAL, timeout=30)
    assert done["state"] == "cancelled"
    wait_until(lambda: not ffmpeg_pids(job["id"]), 10, "ffmpeg to be gone")
    storage = Path(stack.env["SOUS_STORAGE_DIR"])
    job_folder = storage / "jobs" / job["id"][:2] / job["id"]
    assert not (job_folder / "work").exists(), "temporary files are removed"
    assert not list((storage / "uploads").glob("*")), "the upload is removed"


def test_a_worker_killed_mid_transcode_redelivers_and_finishes(
    tmp_path: Path, clips: dict[str, Path]
) -> None:
    with make_stack(tmp_path, SOUS_HEARTBEAT_INTERVAL="1") as stack:
        worker = stack.start_heavy_worker("heavy-doomed")
        api = stack.start_api()
        with api.client(stack.create_key("video")) as client:
            job = upload(client, clips["long"], preset="mp4-h264-480p")
            wait_until(
                lambda: client.get(f"/v1/jobs/{job['id']}").json()["progress"] > 0,
                60,
                "progress",
            )
            worker.kill()
            wait_until(lambda: not ffmpeg_pids(job["id"]), 10, "ffmpeg to die with its worker")
            stack.start_heavy_worker("heavy-replacement")
            done = wait_for_job(client, job["id"], TERMINAL, timeout=240)
            assert done["state"] == "succeeded", done
            assert done["attempts"] == 2
            info = probe(client.get(f"/v1/jobs/{job['id']}/output").content, tmp_path, "o.mp4")
        assert abs(float(info["format"]["duration"]) - 40) < 1
