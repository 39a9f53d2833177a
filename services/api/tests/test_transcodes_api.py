"""Transcode submission (streamed uploads and URLs), presets, job events and HLS outputs."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from sous_api.routes import events
from sous_core import apikeys, jobs, storage, submissions
from sous_core.db.engine import session_factory
from sous_core.db.models import Job, utcnow
from sous_core.settings import get_settings
from sous_core.states import JobState
from sous_core.transcode_params import PRESETS

VIDEO = bytes(range(256)) * 40
OPTIONS = json.dumps({"preset": "mp4-h264-720p", "thumbnail_at": 1.5})


@pytest.fixture
def storage_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "storage"
    monkeypatch.setenv("SOUS_STORAGE_DIR", str(folder))
    return folder


@pytest.fixture
def client(storage_dir: Path, app_client: TestClient, api_key: str) -> TestClient:
    app_client.headers["Authorization"] = f"Bearer {api_key}"
    return app_client


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> list[uuid.UUID]:
    """Stands in for RabbitMQ: every publish is confirmed; returns the published job ids."""
    published: list[uuid.UUID] = []
    monkeypatch.setattr(
        submissions, "publish_job", lambda _app, job, connection=None: published.append(job.id)
    )
    return published


def uploads(storage_dir: Path) -> list[str]:
    """Every file in the uploads folder, partial (hidden) ones included."""
    folder = storage.uploads_dir(storage_dir)
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def upload(
    client: TestClient,
    video: bytes = VIDEO,
    options: str | None = OPTIONS,
    filename: str = "clip.mp4",
    headers: dict[str, str] | None = None,
) -> Any:
    data = {} if options is None else {"options": options}
    return client.post(
        "/v1/transcodes",
        data=data,
        files={"file": (filename, video, "video/mp4")},
        headers=headers,
    )


def assert_invalid(response: Any, field: str) -> str:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert field in [detail["field"] for detail in error["details"]]
    return error["message"]


def test_presets_list_every_rendition_and_need_a_key(client: TestClient) -> None:
    items = client.get("/v1/presets").json()["items"]
    assert [item["name"] for item in items] == list(PRESETS)
    assert {
        "name": "hls-720p",
        "description": PRESETS["hls-720p"].description,
        "container": "hls",
        "video_codec": "libx264",
        "audio_codec": "aac",
        "max_height": 720,
    } in items
    assert client.get("/v1/presets", headers={"Authorization": ""}).status_code == 401


def test_an_upload_is_stored_whole_and_its_job_queued(
    client: TestClient, storage_dir: Path, broker: list[uuid.UUID]
) -> None:
    response = upload(client, filename="../../home/me/My clip?.mp4")
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"].endswith(f"/v1/jobs/{job['id']}")
    assert (job["kind"], job["state"]) == ("transcode", "queued")
    assert broker == [uuid.UUID(job["id"])]
    source = job["params"]["source"]
    assert source["filename"] == "My clip.mp4"
    assert source["size_bytes"] == len(VIDEO)
    assert storage.upload_path(storage_dir, source["upload"]).read_bytes() == VIDEO
    assert uploads(storage_dir) == [source["upload"]]
    assert job["params"]["options"] == {
        "preset": "mp4-h264-720p",
        "thumbnail_at": 1.5,
        "start": None,
        "duration": None,
    }


def test_a_retry_with_the_same_key_replays_and_keeps_only_the_first_upload(
    client: TestClient, storage_dir: Path, broker: list[uuid.UUID]
) -> None:
    key = {"Idempotency-Key": "upload-1"}
    first = upload(client, headers=key)
    again = upload(client, headers=key)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert uploads(storage_dir) == [first.json()["params"]["source"]["upload"]]
    assert len(broker) == 1
    other = upload(client, options='{"preset": "audio-aac"}', headers=key)
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert len(uploads(storage_dir)) == 1


def test_cancelling_a_queued_upload_deletes_the_upload(
    client: TestClient, storage_dir: Path, broker: list[uuid.UUID]
) -> None:
    job = upload(client).json()
    assert len(uploads(storage_dir)) == 1
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.json()["state"] == "cancelled"
    assert uploads(storage_dir) == []


def test_an_upload_whose_job_is_refused_is_deleted(client: TestClient, storage_dir: Path) -> None:
    response = upload(client)  # no broker is running: 503
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "broker_unavailable"
    assert uploads(storage_dir) == []


@pytest.mark.parametrize(
    ("options", "field", "says"),
    [
        ("{not json", "options", "not valid JSON"),
        ('{"preset": "mp4-h265-4k"}', "options.preset", "'mp4-h264-1080p', 'mp4-h264-720p'"),
        ('{"preset": "hls-720p", "start": -1}', "options.start", "greater than or equal to 0"),
        ('{"preset": "audio-aac", "thumbnail_at": 1}', "options", "has no video"),
        ('{"preset": "hls-720p", "speed": 2}', "options.speed", "Extra inputs"),
        (None, "options", "missing"),
    ],
)
def test_bad_options_are_422_and_nothing_is_kept(
    client: TestClient, storage_dir: Path, options: str | None, field: str, says: str
) -> None:
    message = assert_invalid(upload(client, options=options), field)
    assert says in message
    assert uploads(storage_dir) == []


def test_an_unknown_preset_lists_the_valid_ones(client: TestClient) -> None:
    message = assert_invalid(upload(client, options='{"preset": "nope"}'), "options.preset")
    for name in PRESETS:
        assert f"'{name}'" in message


def test_a_form_without_a_file_is_422(client: TestClient, storage_dir: Path) -> None:
    no_file = client.post(
        "/v1/transcodes", data={"options": OPTIONS}, files={"notes": ("a.txt", b"x")}
    )
    assert "is not a field of this form" in assert_invalid(no_file, "notes")
    only_options = client.post(
        "/v1/transcodes",
        content=b'--b\r\nContent-Disposition: form-data; name="options"\r\n\r\n'
        + OPTIONS.encode()
        + b"\r\n--b--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert "missing" in assert_invalid(only_options, "file")
    assert uploads(storage_dir) == []


def test_a_malformed_multipart_body_is_400(client: TestClient, storage_dir: Path) -> None:
    response = client.post(
        "/v1/transcodes",
        content=b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc',
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_multipart"
    assert uploads(storage_dir) == []


def test_an_upload_past_the_limit_is_413_and_leaves_nothing(
    client: TestClient, storage_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOUS_MAX_UPLOAD_BYTES", "4096")
    get_settings.cache_clear()
    assert upload(client, video=b"v" * 4096).status_code == 503  # at the limit: accepted

    def chunks() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="options"\r\n\r\n'
        yield OPTIONS.encode() + b'\r\n--b\r\nContent-Disposition: form-data; name="file"\r\n\r\n'
        yield from [b"v" * 1000] * 5

    # No Content-Length: only counting the bytes as they come can catch it.
    response = client.post(
        "/v1/transcodes",
        content=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "upload_too_large"
    assert "4096 bytes" in error["message"]
    assert uploads(storage_dir) == []
    declared = upload(client, video=b"v" * (1024 * 1024))
    assert declared.status_code == 413
    assert uploads(storage_dir) == []


def test_a_source_url_is_queued_as_a_transcode(client: TestClient, broker: list[uuid.UUID]) -> None:
    response = client.post(
        "/v1/transcodes",
        json={"source_url": "https://example.com/clip.mp4", "options": {"preset": "hls-720p"}},
    )
    assert response.status_code == 202, response.text
    assert response.json()["params"] == {
        "source": {"url": "https://example.com/clip.mp4"},
        "options": {"preset": "hls-720p", "thumbnail_at": None, "start": None, "duration": None},
    }
    assert "Location" in response.headers


def test_bad_url_requests_are_refused(client: TestClient) -> None:
    bad_url = client.post(
        "/v1/transcodes", json={"source_url": "ftp://example.com/a", "options": {"preset": "x"}}
    )
    assert_invalid(bad_url, "source_url")
    assert_invalid(bad_url, "options.preset")
    malformed = client.post(
        "/v1/transcodes", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "malformed_json"
    text = client.post("/v1/transcodes", content=b"hi", headers={"Content-Type": "text/plain"})
    assert text.status_code == 415


def make_job(tenant: str = "unit", **values: Any) -> uuid.UUID:
    with session_factory().begin() as session:
        tenant_row, _ = apikeys.get_or_create_tenant(session, tenant)
        job = Job(tenant_id=tenant_row.id, kind="transcode", params={}, **values)
        session.add(job)
        session.flush()
        return job.id


def other_tenant_key() -> str:
    with session_factory().begin() as session:
        tenant, _ = apikeys.get_or_create_tenant(session, "someone-else")
        return apikeys.create_key(session, tenant).token


def test_a_file_output_and_its_thumbnail_are_served(client: TestClient, storage_dir: Path) -> None:
    result = {
        "output": {
            "kind": "file",
            "content_type": "video/mp4",
            "filename": "output.mp4",
            "size_bytes": 5,
        },
        "thumbnail": {"content_type": "image/jpeg", "size_bytes": 4},
    }
    job_id = make_job(state=JobState.SUCCEEDED.value, result=result)
    storage.job_dir(storage_dir, job_id).mkdir(parents=True)
    storage.output_path(storage_dir, job_id).write_bytes(b"video")
    storage.thumbnail_path(storage_dir, job_id).write_bytes(b"jpeg")

    output = client.get(f"/v1/jobs/{job_id}/output")
    assert (output.status_code, output.content) == (200, b"video")
    assert output.headers["content-type"] == "video/mp4"
    assert 'filename="output.mp4"' in output.headers["content-disposition"]
    thumbnail = client.get(f"/v1/jobs/{job_id}/thumbnail")
    assert (thumbnail.content, thumbnail.headers["content-type"]) == (b"jpeg", "image/jpeg")
    assert client.get(f"/v1/jobs/{job_id}/output/output").json()["error"]["code"] == (
        "no_such_file"
    )

    stranger = {"Authorization": f"Bearer {other_tenant_key()}"}
    for path in ("output", "thumbnail", "events"):
        response = client.get(f"/v1/jobs/{job_id}/{path}", headers=stranger)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "job_not_found"

    storage.thumbnail_path(storage_dir, job_id).unlink()
    assert client.get(f"/v1/jobs/{job_id}/thumbnail").status_code == 410


def test_a_job_without_a_thumbnail_says_so(client: TestClient) -> None:
    job_id = make_job(state=JobState.SUCCEEDED.value, result={"output": {"kind": "file"}})
    response = client.get(f"/v1/jobs/{job_id}/thumbnail")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "no_thumbnail"


def test_a_fetched_body_keeps_its_download_name(client: TestClient, storage_dir: Path) -> None:
    result = {"output": {"size_bytes": 4, "content_type": "text/plain"}}
    job_id = make_job(state=JobState.SUCCEEDED.value, result=result)
    storage.job_dir(storage_dir, job_id).mkdir(parents=True)
    storage.output_path(storage_dir, job_id).write_bytes(b"body")
    response = client.get(f"/v1/jobs/{job_id}/output")
    assert response.content == b"body"
    assert response.headers["content-type"].startswith("text/plain")
    assert f'filename="{job_id}.out"' in response.headers["content-disposition"]


def test_an_hls_output_is_served_as_a_zip_and_file_by_file(
    client: TestClient, storage_dir: Path
) -> None:
    files = {
        "index.m3u8": b"#EXTM3U\n#EXTINF:4.0,\nseg_000.ts\n#EXTINF:4.0,\nseg_001.ts\n",
        "seg_000.ts": b"G" * 3000,
        "seg_001.ts": b"H" * 2000,
    }
    job_id = make_job(
        state=JobState.SUCCEEDED.value,
        result={"output": {"kind": "hls", "files": list(files)}},
    )
    folder = storage.hls_dir(storage_dir, job_id)
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "unlisted.txt").write_bytes(b"secret")
    (storage.job_dir(storage_dir, job_id) / "output").write_bytes(b"not part of it")

    response = client.get(f"/v1/jobs/{job_id}/output")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert f'filename="{job_id}-hls.zip"' in response.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.testzip() is None
        assert {name: archive.read(name) for name in archive.namelist()} == files

    playlist = client.get(f"/v1/jobs/{job_id}/output/index.m3u8")
    assert playlist.content == files["index.m3u8"]
    assert playlist.headers["content-type"].startswith("application/vnd.apple.mpegurl")
    segment = client.get(f"/v1/jobs/{job_id}/output/seg_001.ts")
    assert (segment.content, segment.headers["content-type"]) == (files["seg_001.ts"], "video/mp2t")
    for name in ("unlisted.txt", "..%2Foutput", "%2E%2E", "output"):
        response = client.get(f"/v1/jobs/{job_id}/output/{name}")
        assert response.status_code == 404, name
    assert client.get(f"/v1/jobs/{job_id}/output/..%2F..%2Fapi.db").status_code == 404

    (folder / "seg_000.ts").unlink()
    assert client.get(f"/v1/jobs/{job_id}/output").json()["error"]["code"] == "output_gone"


def test_an_unfinished_job_has_no_output(client: TestClient) -> None:
    job_id = make_job(state=JobState.RUNNING.value)
    for path in ("output", "output/index.m3u8"):
        assert client.get(f"/v1/jobs/{job_id}/{path}").json()["error"]["code"] == "no_output"


def read_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """``(event, data)`` of each Server-Sent Event, and ``("ping", "")`` for each ping."""
    event, data = "message", ""
    for line in lines:
        if line == ": ping":
            yield "ping", ""
        elif line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif line == "" and data:
            yield event, data
            event, data = "message", ""


def advance(job_id: uuid.UUID) -> None:
    """What a worker does to a job, slower than the stream polls."""
    steps: list[dict[str, Any]] = [
        {"target": JobState.RUNNING, "progress": 10},
        {"progress": 50},
        {"target": JobState.SUCCEEDED, "result": {"output": {"kind": "file"}}},
    ]
    for step in steps:
        time.sleep(0.3)
        with session_factory().begin() as session:
            target = step.pop("target", None)
            if target is None:
                session.execute(
                    update(Job).where(Job.id == job_id).values(updated_at=utcnow(), **step)
                )
            else:
                jobs.transition(session, job_id, target, **step)


def test_events_follow_a_job_until_it_finishes(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "POLL_INTERVAL_SECONDS", 0.05)
    job_id = make_job(state=JobState.QUEUED.value)
    worker = threading.Thread(target=advance, args=(job_id,))
    worker.start()
    try:
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-accel-buffering"] == "no"
            received = list(read_events(response.iter_lines()))
    finally:
        worker.join()
    assert {event for event, _ in received} == {"job"}
    states = [(job["state"], job["progress"]) for job in (json.loads(d) for _, d in received)]
    assert states == [("queued", 0), ("running", 10), ("running", 50), ("succeeded", 100)]
    assert json.loads(received[-1][1])["id"] == str(job_id)


def test_a_finished_job_streams_one_event_and_a_quiet_one_pings(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = make_job(state=JobState.FAILED.value, error_code="boom", error_message="it broke")
    with client.stream("GET", f"/v1/jobs/{done}/events") as response:
        [(_, data)] = list(read_events(response.iter_lines()))
    assert json.loads(data)["error"] == {"code": "boom", "message": "it broke"}

    monkeypatch.setattr(events, "POLL_INTERVAL_SECONDS", 0.02)
    monkeypatch.setattr(events, "PING_INTERVAL_SECONDS", 0.1)
    quiet = make_job(state=JobState.QUEUED.value)
    with client.stream("GET", f"/v1/jobs/{quiet}/events") as response:
        received = read_events(response.iter_lines())
        assert next(received)[0] == "job"
        assert next(received) == ("ping", "")
    assert client.get(f"/v1/jobs/{uuid.uuid4()}/events").status_code == 404


def test_upload_paths_are_only_upload_ids(storage_dir: Path) -> None:
    upload_id = storage.new_upload_id()
    assert storage.upload_path(storage_dir, upload_id) == storage_dir / "uploads" / upload_id
    for bad in ("../x", "A" * 32, upload_id + "/", ""):
        with pytest.raises(ValueError, match="not an upload id"):
            storage.upload_path(storage_dir, bad)
