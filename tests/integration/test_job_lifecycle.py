"""A fetch job through HTTP, the broker and a real worker, to its outcome."""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest

from support.stack import OK_BODY, OK_SHA256, Origin, wait_for_job

pytestmark = pytest.mark.integration


def test_fetch_job_runs_to_succeeded_with_the_fetched_facts(
    client: httpx.Client, origin: Origin
) -> None:
    response = client.post("/v1/fetches", json={"url": f"{origin.url}/ok"})

    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"].endswith(f"/v1/jobs/{job['id']}")
    assert job["state"] in {"queued", "running", "succeeded"}
    assert job["kind"] == "fetch"

    done = wait_for_job(client, job["id"], {"succeeded", "failed"})
    assert done["state"] == "succeeded", done
    assert done["progress"] == 100
    assert done["attempts"] == 1
    assert done["error"] is None
    result = done["result"]
    assert result["status_code"] == 200
    assert result["sha256"] == OK_SHA256
    assert result["size_bytes"] == len(OK_BODY)
    assert result["content_type"] == "text/plain"
    assert result["elapsed_seconds"] > 0
    stamps = [
        datetime.fromisoformat(done[name])
        for name in ("created_at", "queued_at", "started_at", "finished_at")
    ]
    assert stamps == sorted(stamps)


def test_blocked_private_url_fails_at_once_with_a_clear_error(
    client: httpx.Client, origin: Origin
) -> None:
    # 127.0.0.2 is loopback but outside the allowed 127.0.0.1/32; 10/8 is private.
    port = origin.url.rsplit(":", 1)[1]
    for url, reason in (
        (f"http://127.0.0.2:{port}/ok", "loopback"),
        ("http://10.255.255.1/ok", "private"),
    ):
        job = client.post("/v1/fetches", json={"url": url}).json()
        done = wait_for_job(client, job["id"], {"succeeded", "failed"})
        assert done["state"] == "failed"
        assert done["error"]["code"] == "url_blocked"
        assert reason in done["error"]["message"]
        assert done["attempts"] == 1, "a blocked URL must not be retried"


def test_transient_failures_retry_with_backoff_then_fail(
    client: httpx.Client, origin: Origin
) -> None:
    job = client.post("/v1/fetches", json={"url": f"{origin.url}/status/503"}).json()

    done = wait_for_job(client, job["id"], {"succeeded", "failed"}, timeout=60)

    assert done["state"] == "failed"
    assert done["error"]["code"] == "http_error"
    assert "503" in done["error"]["message"]
    assert "gave up after 3 attempts" in done["error"]["message"]
    # SOUS_MAX_RETRIES=2 in the test stack: one try and two retries.
    assert done["attempts"] == 3
    assert origin.hits["/status/503"] == 3


def test_permanent_http_error_is_not_retried(client: httpx.Client, origin: Origin) -> None:
    job = client.post("/v1/fetches", json={"url": f"{origin.url}/status/404"}).json()

    done = wait_for_job(client, job["id"], {"succeeded", "failed"})

    assert done["state"] == "failed"
    assert done["error"]["code"] == "http_error"
    assert "404" in done["error"]["message"]
    assert done["attempts"] == 1
    assert origin.hits["/status/404"] == 1


def test_cancel_a_running_job_stops_it(client: httpx.Client, origin: Origin) -> None:
    job = client.post("/v1/fetches", json={"url": f"{origin.url}/drip/20"}).json()
    wait_for_job(client, job["id"], {"running"})

    response = client.post(f"/v1/jobs/{job['id']}/cancel")

    assert response.status_code == 202
    assert response.json()["cancel_requested"] is True
    done = wait_for_job(client, job["id"], {"succeeded", "failed", "cancelled"}, timeout=15)
    assert done["state"] == "cancelled"
    again = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "job_finished"


def test_list_is_newest_first_with_cursor_pages_and_filters(
    client: httpx.Client, origin: Origin
) -> None:
    ids = [
        client.post("/v1/fetches", json={"url": f"{origin.url}/ok?n={n}"}).json()["id"]
        for n in range(5)
    ]
    for job_id in ids:
        wait_for_job(client, job_id, {"succeeded"})

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params).json()
        seen += [job["id"] for job in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen[:5] == list(reversed(ids))
    assert len(seen) == len(set(seen))
    assert pages == (len(seen) + 1) // 2

    succeeded = client.get("/v1/jobs", params={"state": "succeeded", "kind": "fetch"}).json()
    assert {job["state"] for job in succeeded["items"]} == {"succeeded"}
    assert client.get("/v1/jobs", params={"kind": "email"}).json()["items"] == []
