"""Transcode uploads through a real API process: streamed to storage, capped, queued."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sous_core import storage
from support.stack import Api, Stack

pytestmark = pytest.mark.integration

OPTIONS = json.dumps({"preset": "mp4-h264-480p", "thumbnail_at": 1})
MB = 1024 * 1024


def uploads_dir(stack: Stack) -> Path:
    return storage.uploads_dir(Path(stack.env["SOUS_STORAGE_DIR"]))


def stored_uploads(stack: Stack) -> set[str]:
    folder = uploads_dir(stack)
    return {path.name for path in folder.iterdir()} if folder.exists() else set()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def multipart_stream(boundary: str, file_bytes: int, chunk: bytes) -> Iterator[bytes]:
    """A multipart body made on the fly (so the test never holds it): options, then a file."""
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="options"\r\n\r\n{OPTIONS}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    left = file_bytes
    while left > 0:
        piece = chunk[:left]
        left -= len(piece)
        yield piece
    yield f"\r\n--{boundary}--\r\n".encode()


def post_stream(client: httpx.Client, body: Iterator[bytes], boundary: str) -> httpx.Response:
    # An iterator body goes out chunked, without Content-Length.
    return client.post(
        "/v1/transcodes",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=60,
    )


def test_an_upload_is_stored_byte_for_byte_and_its_job_queued(
    client: httpx.Client, stack: Stack
) -> None:
    video = os.urandom(MB + 17)
    response = client.post(
        "/v1/transcodes",
        data={"options": OPTIONS},
        files={"file": ("clip.mp4", video, "video/mp4")},
    )
    assert response.status_code == 202, response.text
    upload_id = response.json()["params"]["source"]["upload"]
    stored = storage.upload_path(Path(stack.env["SOUS_STORAGE_DIR"]), upload_id)
    assert stored.read_bytes() == video
    job = client.get(response.headers["Location"]).json()
    assert job["kind"] == "transcode"
    assert job["state"] in {"queued", "running"}
    assert job["params"]["source"] == {
        "upload": upload_id,
        "filename": "clip.mp4",
        "size_bytes": len(video),
    }
    assert job["params"]["options"]["preset"] == "mp4-h264-480p"
    assert not [name for name in stored_uploads(stack) if name.endswith(".partial")]


def test_a_50_mb_upload_does_not_grow_the_api_process_by_its_size(
    stack: Stack, tenant_key: str
) -> None:
    api = stack.start_api()
    chunk = os.urandom(MB)
    with api.client(tenant_key) as client:
        boundary = secrets.token_hex(8)
        warm_up = post_stream(client, multipart_stream(boundary, 2 * MB, chunk), boundary)
        assert warm_up.status_code == 202, warm_up.text
        before = rss_bytes(api.proc.popen.pid)
        response = post_stream(client, multipart_stream(boundary, 50 * MB, chunk), boundary)
        growth = rss_bytes(api.proc.popen.pid) - before
    assert response.status_code == 202, response.text
    source = response.json()["params"]["source"]
    assert source["size_bytes"] == 50 * MB
    stored = storage.upload_path(Path(stack.env["SOUS_STORAGE_DIR"]), source["upload"])
    assert stored.stat().st_size == 50 * MB
    stored.unlink()
    assert growth < 20 * MB, f"the API grew by {growth / MB:.1f} MB during a 50 MB upload"


@pytest.fixture(scope="module")
def capped_api(stack: Stack) -> Api:
    return stack.start_api(env={**stack.env, "SOUS_MAX_UPLOAD_BYTES": str(64 * 1024)})


def test_an_upload_past_the_cap_is_413_while_it_streams_and_leaves_nothing(
    capped_api: Api, stack: Stack, tenant_key: str
) -> None:
    before = stored_uploads(stack)
    boundary = secrets.token_hex(8)
    with capped_api.client(tenant_key) as client:
        body = multipart_stream(boundary, 20 * MB, os.urandom(16 * 1024))
        response = post_stream(client, body, boundary)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "upload_too_large"
    assert "65536 bytes" in error["message"]
    assert stored_uploads(stack) == before


def test_a_declared_size_past_the_cap_is_413_before_the_body_is_read(
    capped_api: Api, stack: Stack, tenant_key: str
) -> None:
    before = stored_uploads(stack)
    with capped_api.client(tenant_key) as client:
        response = client.post(
            "/v1/transcodes",
            data={"options": OPTIONS},
            files={"file": ("clip.mp4", os.urandom(2 * MB), "video/mp4")},
        )
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "upload_too_large"
        small = client.post(
            "/v1/transcodes",
            data={"options": OPTIONS},
            files={"file": ("clip.mp4", os.urandom(1000), "video/mp4")},
        )
    assert small.status_code == 202, small.text
    assert stored_uploads(stack) - before == {small.json()["params"]["source"]["upload"]}
