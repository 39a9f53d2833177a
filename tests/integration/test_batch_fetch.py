"""Batch fetches: one job fanned out into a child fetch job per URL, run in parallel."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest

from support.stack import OK_BODY, OK_SHA256, Api, Origin, Stack, make_stack, wait_for_job

pytestmark = pytest.mark.integration

PER_HOST = 3
MAX_BYTES = 4096


@pytest.fixture(scope="module")
def batch_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Api]]:
    with make_stack(
        tmp_path_factory.mktemp("batch"),
        SOUS_FETCH_TIMEOUT="1",
        SOUS_FETCH_MAX_BYTES=str(MAX_BYTES),
        SOUS_MAX_RETRIES="0",
        SOUS_FETCH_PER_HOST_CONCURRENCY=str(PER_HOST),
        SOUS_FETCH_MAX_BATCH="50",
    ) as stack:
        stack.start_fast_worker(concurrency=50)
        yield stack, stack.start_api()


@pytest.fixture
def batch_client(batch_stack: tuple[Stack, Api]) -> Iterator[httpx.Client]:
    stack, api = batch_stack
    with api.client(stack.create_key("batches")) as client:
        yield client


@pytest.fixture
def local_origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.close()


def test_a_mixed_batch_finishes_with_every_outcome(
    batch_client: httpx.Client, local_origin: Origin
) -> None:
    port = local_origin.url.rsplit(":", 1)[1]
    urls = [
        f"{local_origin.url}/ok",
        f"{local_origin.url}/status/404",
        f"{local_origin.url}/hang",
        f"{local_origin.url}/bytes/10000",
        f"{local_origin.url}/redirect?to=http://127.0.0.2:{port}/ok",
        f"{local_origin.url}/redirect?to=http://169.254.169.254/latest/meta-data/",
    ]
    response = batch_client.post("/v1/fetches", json={"urls": urls, "store_body": True})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["kind"] == "fetch_batch"

    batch = wait_for_job(batch_client, accepted["id"], {"succeeded", "failed"}, timeout=60)
    assert batch["state"] == "succeeded", "one failed URL must not fail the batch"
    assert batch["progress"] == 100
    assert batch["batch"] == {"total": 6, "finished": 6}
    result = batch["result"]
    assert (result["total"], result["succeeded"], result["failed"]) == (6, 2, 4)
    items = result["items"]
    assert [item["url"] for item in items] == urls
    ok, missing, hung, big, to_loopback, to_metadata = items

    assert ok["state"] == "succeeded"
    assert ok["result"]["sha256"] == OK_SHA256
    assert ok["result"]["status_code"] == 200
    assert ok["result"]["headers"]["content-type"] == "text/plain"
    assert missing["error"]["code"] == "http_error"
    assert "404" in missing["error"]["message"]
    assert hung["error"]["code"] == "timeout"
    assert big["state"] == "succeeded"
    assert big["result"]["truncated"] is True
    assert big["result"]["size_bytes"] == MAX_BYTES
    assert big["result"]["sha256"] == hashlib.sha256(b"b" * MAX_BYTES).hexdigest()
    for blocked in (to_loopback, to_metadata):
        assert blocked["error"]["code"] == "url_blocked", blocked
    assert "metadata" in to_metadata["error"]["message"]
    assert local_origin.hits["/ok"] == 1, (
        "the redirect to another loopback address was not followed"
    )

    # Stored bodies download from each child's output; a failed child has none.
    body = batch_client.get(f"/v1/jobs/{ok['job_id']}/output")
    assert body.status_code == 200
    assert body.content == OK_BODY
    assert body.headers["content-type"].startswith("text/plain")
    assert body.headers["content-disposition"].startswith("attachment")
    assert body.headers["x-content-type-options"] == "nosniff"
    assert body.headers["content-security-policy"] == "sandbox"
    assert batch_client.get(f"/v1/jobs/{big['job_id']}/output").content == b"b" * MAX_BYTES
    none = batch_client.get(f"/v1/jobs/{missing['job_id']}/output")
    assert none.status_code == 404
    assert none.json()["error"]["code"] == "no_output"

    # Children are jobs of their own, listed under their batch and not at the top level.
    children = batch_client.get("/v1/jobs", params={"parent_id": batch["id"], "limit": 50}).json()
    assert sorted(child["id"] for child in children["items"]) == sorted(
        item["job_id"] for item in items
    )
    assert all(child["parent_id"] == batch["id"] for child in children["items"])
    top = [job["id"] for job in batch_client.get("/v1/jobs").json()["items"]]
    assert batch["id"] in top
    assert ok["job_id"] not in top


def test_a_batch_on_one_host_keeps_to_the_per_host_limit(
    batch_client: httpx.Client, local_origin: Origin
) -> None:
    urls = [f"{local_origin.url}/delay/0.3?n={i}" for i in range(12)]
    job_id = batch_client.post("/v1/fetches", json={"urls": urls}).json()["id"]
    batch = wait_for_job(batch_client, job_id, {"succeeded", "failed"}, timeout=60)
    assert batch["result"]["succeeded"] == 12
    assert local_origin.max_in_flight <= PER_HOST
    assert local_origin.max_in_flight >= 2, "the fetches did run in parallel"


def test_cancelling_a_batch_cancels_what_has_not_run(
    batch_client: httpx.Client, local_origin: Origin
) -> None:
    urls = [f"{local_origin.url}/delay/1?n={i}" for i in range(15)]
    job_id = batch_client.post("/v1/fetches", json={"urls": urls}).json()["id"]
    wait_for_job(batch_client, job_id, {"running"})
    response = batch_client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202, response.text
    batch = wait_for_job(batch_client, job_id, {"succeeded", "failed", "cancelled"}, timeout=30)
    assert batch["state"] == "cancelled"
    result = batch["result"]
    assert result["total"] == 15
    assert result["cancelled"] >= 15 - 2 * PER_HOST, result
    assert result["succeeded"] + result["cancelled"] + result["failed"] == 15
    assert sum(local_origin.hits.values()) < 15


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        ({"urls": [f"http://example.com/{i}" for i in range(51)]}, "at most 50"),
        ({"urls": []}, "urls"),
        ({"url": "http://example.com/", "urls": ["http://example.com/"]}, "either url"),
        ({}, "either url"),
        ({"urls": ["http://example.com/", "file:///etc/passwd"]}, "urls[1]"),
        ({"url": "http://example.com/", "callback_url": "gopher://x/"}, "callback_url"),
    ],
)
def test_bad_batches_are_refused_with_a_clear_message(
    batch_client: httpx.Client, body: dict, mentions: str
) -> None:
    response = batch_client.post("/v1/fetches", json=body)
    assert response.status_code == 422, response.text
    assert mentions in response.json()["error"]["message"]
