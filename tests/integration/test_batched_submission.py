"""Concurrent submissions are written, confirmed and marked together, each answered as alone."""

from __future__ import annotations

import contextlib
import secrets
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session

from sous_core import apikeys, quotas, submissions
from sous_core.db.engine import make_engine
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


def test_two_batches_charging_the_same_tenants_in_opposite_orders_do_not_deadlock(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two API processes may write batches for the same tenants at once; each batch locks
    # its tenants' usage rows. Here each batch pauses after its first charge until the
    # other has made one too (or 2 s passed): in opposite orders that would deadlock.
    engine = make_engine(stack.database_url())
    with Session(engine) as session, session.begin():
        tenants = [
            apikeys.get_or_create_tenant(session, f"order-{name}-{secrets.token_hex(3)}")[0].id
            for name in ("a", "b")
        ]
    day = datetime.now(UTC).date()
    both_charged_once = threading.Barrier(2)
    real_charge = quotas.apply_charge
    first_charge_done = threading.local()

    def charge_then_wait(session: Session, charge: quotas.Charge) -> int | None:
        used = real_charge(session, charge)
        if not getattr(first_charge_done, "value", False):
            first_charge_done.value = True
            with contextlib.suppress(threading.BrokenBarrierError):
                both_charged_once.wait(timeout=2)
        return used

    monkeypatch.setattr(quotas, "apply_charge", charge_then_wait)
    errors: list[BaseException] = []

    def batch(order: list[uuid.UUID]) -> None:
        pending = [
            (submissions._new_job(now=datetime.now(UTC), tenant_id=tenant, kind="fetch",
                                  params={"url": "https://example.com/"}, idempotency_key=None,
                                  request_sha256="0" * 64, callback_url=None, schedule_id=None),
             quotas.Charge(tenant, day, "jobs:fetch", 1))
            for tenant in order
        ]  # fmt: skip
        try:
            with Session(engine) as session:
                assert submissions._create_and_charge_all(session, pending) == set()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=batch, args=(order,)) for order in (tenants, tenants[::-1])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert errors == []
        with Session(engine) as session:
            for tenant in tenants:
                usage = quotas.quotas_of(session, tenant, datetime.now(UTC))
                assert [status.used for status in usage if status.metric == "jobs:fetch"] == [2]
    finally:
        engine.dispose()
