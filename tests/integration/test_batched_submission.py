"""Concurrent submissions are written, confirmed and marked together, each answered as alone."""

from __future__ import annotations

import secrets
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from support.scrape import scrape
from support.stack import TERMINAL, Api, Origin, Stack, wait_for_job

pytestmark = pytest.mark.integration


def post_all(api: Api, requests: list[tuple[str, str, dict[str, Any]]]) -> list[httpx.Response]:
    """POST every ``(key, path, body)`` at once, from as many threads as requests."""

    def post(request: tuple[str, str, dict[str, Any]]) -> httpx.Response:
        key, path, body = request
        with api.client(key) as client:
            return client.post(path, json=body)

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        return list(pool.map(post, requests))


def batch_counts(api: Api) -> tuple[float, float]:
    """(batches, jobs in them) so far, from the API's own metrics."""
    samples = scrape(f"{api.url}/metrics")
    return (
        samples.total("sous_api_submission_batch_size_count"),
        samples.total("sous_api_submission_batch_size_sum"),
    )


def test_concurrent_submissions_are_batched_and_every_job_is_queued_and_runs(
    stack: Stack, api: Api, origin: Origin, tenant_key: str, client: httpx.Client
) -> None:
    batches_before, jobs_before = batch_counts(api)
    requests = [(tenant_key, "/v1/fetches", {"url": f"{origin.url}/ok?{n}"}) for n in range(60)]
    requests += [
        (tenant_key, "/v1/emails", {"to": [f"user{n}@example.com"], "subject": "hi", "text": "x"})
        for n in range(20)
    ]
    responses = post_all(api, requests)

    assert [response.status_code for response in responses] == [202] * 80
    jobs = [response.json() for response in responses]
    assert len({job["id"] for job in jobs}) == 80
    for (_, path, body), response, job in zip(requests, responses, jobs, strict=True):
        assert response.headers["Location"].endswith(f"/v1/jobs/{job['id']}")
        assert job["kind"] == ("fetch" if path == "/v1/fetches" else "email")
        # Answered once committed, confirmed and marked (a worker may have started it).
        assert job["state"] in {"queued", "running", "succeeded"}
        assert job["queued_at"] is not None
        if path == "/v1/fetches":
            assert job["params"]["url"] == body["url"]
    batches_after, jobs_after = batch_counts(api)
    assert jobs_after - jobs_before == 80
    assert 1 <= batches_after - batches_before < 80  # some requests shared a batch
    for job in jobs:
        assert wait_for_job(client, job["id"], TERMINAL)["state"] == "succeeded"


def test_a_quota_refuses_exactly_the_jobs_past_it_and_no_other_tenants(
    stack: Stack, api: Api, origin: Origin
) -> None:
    limited = f"batch-limited-{secrets.token_hex(3)}"
    limited_key = stack.create_key(limited)
    other_key = stack.create_key(f"batch-other-{secrets.token_hex(3)}")
    stack.run("sous", "tenants", "set-quota", "--tenant", limited, "--metric", "jobs:fetch",
              "--daily-limit", "5")  # fmt: skip
    body = {"url": f"{origin.url}/ok"}
    requests = [(limited_key, "/v1/fetches", body)] * 20 + [(other_key, "/v1/fetches", body)] * 20
    responses = post_all(api, requests)

    limited_statuses = Counter(response.status_code for response in responses[:20])
    assert limited_statuses == {202: 5, 429: 15}
    for response in responses[:20]:
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "quota_exceeded"
            assert int(response.headers["Retry-After"]) >= 1
    assert [response.status_code for response in responses[20:]] == [202] * 20
    with api.client(limited_key) as limited_client:
        listed = limited_client.get("/v1/jobs", params={"limit": 100}).json()["items"]
    # Refused submissions left no job behind; the accepted ones are the ones listed.
    assert sorted(job["id"] for job in listed) == sorted(
        response.json()["id"] for response in responses[:20] if response.status_code == 202
    )
