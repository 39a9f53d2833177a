"""Concurrent submissions are written, confirmed and marked together, each answered as alone."""

from __future__ import annotations

import contextlib
import secrets
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from celery import Celery
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session

from sous_core import apikeys, quotas, submissions
from sous_core.celery_app import create_celery_app
from sous_core.db.engine import make_engine
from sous_core.resources import JobResource
from sous_core.settings import Settings
from support.scrape import scrape
from support.stack import TERMINAL, Api, Origin, Stack, wait_for_job, wait_until

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


def test_idempotency_keys_in_batches_make_one_job_per_key_and_replay_the_rest(
    api: Api, origin: Origin, tenant_key: str
) -> None:
    batches_before, jobs_before = batch_counts(api)
    keys = [f"batch-key-{secrets.token_hex(4)}" for _ in range(24)]
    body = {"url": f"{origin.url}/ok"}
    # Every key once, a third of them twice more (a client's retries racing the original),
    # and one key again with another body, all at once.
    requests = [(key, body) for key in keys] + [(key, body) for key in keys[:8] for _ in range(2)]
    conflicting = (keys[-1], {"url": f"{origin.url}/ok?other"})
    requests.append(conflicting)

    def post(request: tuple[str, dict[str, Any]]) -> httpx.Response:
        key, json_body = request
        with api.client(tenant_key) as client:
            return client.post("/v1/fetches", json=json_body, headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        responses = list(pool.map(post, requests))

    by_key: dict[str, list[httpx.Response]] = {}
    for (key, _), response in zip(requests, responses, strict=True):
        by_key.setdefault(key, []).append(response)
    for key in keys[:-1]:
        answers = by_key[key]
        assert [response.status_code for response in answers] == [202] * len(answers)
        assert len({response.json()["id"] for response in answers}) == 1, key
        replayed = [response.headers.get("Idempotent-Replayed") for response in answers]
        assert sorted(replayed, key=str) == sorted([None] + ["true"] * (len(answers) - 1), key=str)
    # The key used with two bodies: whichever came first made the job, the other is refused.
    statuses = sorted(response.status_code for response in by_key[keys[-1]])
    assert statuses == [202, 422]
    refused = next(r for r in by_key[keys[-1]] if r.status_code == 422)
    assert refused.json()["error"]["code"] == "idempotency_key_reused"
    accepted = {response.json()["id"] for response in responses if response.status_code == 202}
    assert len(accepted) == len(keys)  # one job per key
    batches_after, jobs_after = batch_counts(api)
    assert jobs_after - jobs_before == len(requests)  # every keyed request went to a batch
    assert batches_after - batches_before < len(requests)  # and some shared one


@contextlib.contextmanager
def in_process(stack: Stack, name: str) -> Iterator[tuple[Engine, Celery, uuid.UUID]]:
    """``submit_many`` called directly, as an API process does: an engine on the stack's
    database, a confirming Celery app on its vhost and a new tenant."""
    engine = make_engine(stack.database_url())
    settings = Settings(
        broker_url=stack.env["SOUS_BROKER_URL"], result_backend=stack.env["SOUS_RESULT_BACKEND"]
    )
    celery = create_celery_app(f"test-{name}", settings, publisher_confirms=True)
    try:
        with Session(engine) as session, session.begin():
            tenant = apikeys.get_or_create_tenant(session, f"{name}-{secrets.token_hex(3)}")[0]
            tenant_id = tenant.id
        yield engine, celery, tenant_id
    finally:
        celery.close()
        engine.dispose()


def test_a_key_committed_while_a_batch_waits_to_insert_it_is_answered_as_a_replay(
    stack: Stack,
) -> None:
    # Another API process holds the new key in an uncommitted INSERT: the batch looked the
    # key up (not there yet), its INSERT waits on the unique index, and once the other
    # commits it fails; the batch then submits that request on its own, which replays.
    with in_process(stack, "race") as (engine, celery, tenant):
        key, params = f"race-{secrets.token_hex(4)}", {"url": "https://example.com/"}
        fingerprint = submissions.request_fingerprint("fetch", params, None)
        other = Session(engine)
        holder = submissions._new_job(
            now=datetime.now(UTC), tenant_id=tenant, kind="fetch", params=params,
            idempotency_key=key, request_sha256=fingerprint, callback_url=None, schedule_id=None,
        )  # fmt: skip
        other.add(holder)
        other.flush()  # the row and its key are written, not committed
        outcomes: list[Any] = []

        def batch() -> None:
            with Session(engine) as session:
                request = submissions.Submission(tenant, "fetch", params, idempotency_key=key)
                outcomes.extend(submissions.submit_many(session, celery, [request]))

        thread = threading.Thread(target=batch)
        try:
            thread.start()
            with engine.connect() as probe:
                wait_until(
                    lambda: (
                        probe.execute(
                            text("SELECT count(*) FROM pg_locks WHERE NOT granted")
                        ).scalar_one()
                        > 0
                    ),
                    10,
                    "the batch's INSERT to wait on the key",
                )
            other.commit()
            thread.join(30)
            [outcome] = outcomes
            assert not isinstance(outcome, Exception), outcome
            job, replayed = outcome
            assert (job.id, replayed) == (holder.id, True)
            with Session(engine) as session:
                assert (
                    session.scalar(
                        text("SELECT count(*) FROM jobs WHERE idempotency_key = :key"), {"key": key}
                    )
                    == 1
                )
        finally:
            other.close()


def test_replays_in_a_batch_are_answered_from_one_query(stack: Stack) -> None:
    params = {"url": "https://example.com/"}
    keys = [f"replay-{n}-{secrets.token_hex(4)}" for n in range(3)]
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    with in_process(stack, "replays") as (engine, celery, tenant):
        requests = [
            submissions.Submission(tenant, "fetch", params, idempotency_key=k) for k in keys
        ]
        with Session(engine) as session:
            first = submissions.submit_many(session, celery, requests)
        event.listen(engine, "before_cursor_execute", record)
        with Session(engine) as session:
            again = submissions.submit_many(session, celery, requests + requests)
            answers = [JobResource.from_job(outcome[0]) for outcome in again]  # type: ignore[index]
        event.remove(engine, "before_cursor_execute", record)
    assert [outcome[1] for outcome in again] == [True] * 6  # type: ignore[index]
    created = [outcome[0].id for outcome in first]  # type: ignore[index]
    assert [answer.id for answer in answers] == created + created
    # The key lookup is the only read: no row is read again to answer (before, each
    # replayed job was expired by the batch's rollback and reloaded by the answer).
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(reads) == 1, reads
    assert not [s for s in statements if s.lstrip().upper().startswith(("INSERT", "UPDATE"))]
