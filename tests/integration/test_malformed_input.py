"""Malformed requests get a clear 4xx in the one error shape, never a 500."""

from __future__ import annotations

import httpx
import pytest

from support.stack import Api

pytestmark = pytest.mark.integration


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "malformed_json"),
        (b"", "application/json", 422, "validation_error"),
        (b"[]", "application/json", 422, "validation_error"),
        (b'{"url": 42}', "application/json", 422, "validation_error"),
        (b'{"link": "https://example.com"}', "application/json", 422, "validation_error"),
        (b'{"url": "ftp://example.com/file"}', "application/json", 422, "validation_error"),
        (b'{"url": "file:///etc/passwd"}', "application/json", 422, "validation_error"),
        (b'{"url": "https://user:pw@example.com/"}', "application/json", 422, "validation_error"),
        (b'{"url": "https://"}', "application/json", 422, "validation_error"),
        (b'{"url": "https://example.com:99999/"}', "application/json", 422, "validation_error"),
        (b'{"url": "https://example.com/a b"}', "application/json", 422, "validation_error"),
        (
            b'{"url": "https://example.com/", "extra": 1}',
            "application/json",
            422,
            "validation_error",
        ),
        (b"url=https://example.com", "application/x-www-form-urlencoded", 422, "validation_error"),
        (b"\xff\xfe\x00garbage", "application/json", 400, "malformed_json"),
    ],
)
def test_bad_fetch_bodies_are_refused(
    client: httpx.Client, content: bytes, content_type: str, status: int, code: str
) -> None:
    response = client.post("/v1/fetches", content=content, headers={"Content-Type": content_type})
    assert_error(response, status, code)


def test_validation_errors_name_the_field(client: httpx.Client) -> None:
    response = client.post("/v1/fetches", json={"url": "ftp://example.com/"})
    error = response.json()["error"]
    assert error["details"][0]["field"] == "url"
    assert "http" in error["message"]


def test_too_large_bodies_are_413(client: httpx.Client) -> None:
    huge = {"url": "https://example.com/" + "a" * (2 * 1024 * 1024)}
    assert_error(client.post("/v1/fetches", json=huge), 413, "payload_too_large")

    def chunks():
        yield b'{"url": "https://example.com/'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}'

    chunked = client.post(
        "/v1/fetches", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_error(chunked, 413, "payload_too_large")


def test_url_longer_than_the_limit_is_422(client: httpx.Client) -> None:
    response = client.post("/v1/fetches", json={"url": "https://example.com/" + "a" * 3000})
    assert_error(response, 422, "validation_error")


@pytest.mark.parametrize(
    ("method", "path", "params", "status", "code"),
    [
        ("GET", "/v1/jobs/not-a-uuid", {}, 422, "validation_error"),
        ("POST", "/v1/jobs/not-a-uuid/cancel", {}, 422, "validation_error"),
        ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000", {}, 404, "job_not_found"),
        ("GET", "/v1/jobs", {"state": "exploded"}, 422, "validation_error"),
        ("GET", "/v1/jobs", {"limit": "0"}, 422, "validation_error"),
        ("GET", "/v1/jobs", {"limit": "100000"}, 422, "validation_error"),
        ("GET", "/v1/jobs", {"limit": "many"}, 422, "validation_error"),
        ("GET", "/v1/jobs", {"cursor": "%%%not-a-cursor"}, 400, "invalid_cursor"),
        ("GET", "/v1/jobs", {"cursor": "bm90fGEtY3Vyc29y"}, 400, "invalid_cursor"),
        ("DELETE", "/v1/jobs", {}, 405, "method_not_allowed"),
        ("GET", "/v1/nothing-here", {}, 404, "not_found"),
    ],
)
def test_bad_job_requests_are_refused(
    client: httpx.Client, method: str, path: str, params: dict[str, str], status: int, code: str
) -> None:
    assert_error(client.request(method, path, params=params), status, code)


def test_bad_idempotency_key_is_400(client: httpx.Client) -> None:
    response = client.post(
        "/v1/fetches", json={"url": "https://example.com/"}, headers={"Idempotency-Key": "k" * 300}
    )
    assert_error(response, 400, "invalid_idempotency_key")


def test_openapi_and_docs_are_served(api: Api) -> None:
    spec = httpx.get(f"{api.url}/openapi.json").json()
    assert "/v1/fetches" in spec["paths"]
    assert "/v1/jobs/{job_id}/cancel" in spec["paths"]
    assert httpx.get(f"{api.url}/docs").status_code == 200


def json_body_operations(api: Api) -> list[tuple[str, str]]:
    """Every operation taking a JSON body, from the API's own description."""
    spec = httpx.get(f"{api.url}/openapi.json").json()
    return [
        (method.upper(), path.replace("{schedule_id}", "00000000-0000-4000-8000-000000000000"))
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    ]


def test_every_json_route_refuses_oversized_and_malformed_bodies(
    api: Api, client: httpx.Client
) -> None:
    operations = json_body_operations(api)
    assert {path for _, path in operations} >= {
        "/v1/fetches",
        "/v1/emails",
        "/v1/transcodes",
        "/v1/schedules",
    }
    huge = b'{"x": "' + b"a" * (2 * 1024 * 1024) + b'"}'

    def chunks():
        yield huge[:1024]
        yield from (huge[start : start + 65536] for start in range(1024, len(huge), 65536))

    for method, path in operations:
        json_headers = {"Content-Type": "application/json"}
        declared = client.request(method, path, content=huge, headers=json_headers)
        assert_error(declared, 413, "payload_too_large")
        streamed = client.request(method, path, content=chunks(), headers=json_headers)
        assert_error(streamed, 413, "payload_too_large")
        assert_error(
            client.request(method, path, content=b'{"url": ', headers=json_headers),
            400,
            "malformed_json",
        )


def test_a_multipart_text_field_past_its_limit_is_422(client: httpx.Client) -> None:
    response = client.post(
        "/v1/transcodes",
        data={"options": '{"preset": "' + "p" * (65 * 1024) + '"}'},
        files={"file": ("clip.mp4", b"not really a video", "video/mp4")},
    )
    assert_error(response, 422, "validation_error")
    assert "options" in response.json()["error"]["message"]
