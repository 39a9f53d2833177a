"""Webhook outbox and signatures on a real (SQLite) database."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from sous_core import apikeys, jobs, webhooks
from sous_core.db.models import Job, WebhookDelivery, utcnow
from sous_core.states import JobState


def finished_job(session: Session, callback_url: str | None) -> Job:
    tenant, _ = apikeys.get_or_create_tenant(session, "acme")
    job = Job(tenant_id=tenant.id, kind="fetch", params={}, callback_url=callback_url)
    session.add(job)
    session.commit()
    jobs.transition(session, job.id, JobState.RUNNING)
    session.commit()
    assert session.execute(select(WebhookDelivery)).first() is None  # not before it ends
    jobs.transition(session, job.id, JobState.SUCCEEDED, result={"ok": True})
    session.commit()
    return job


def test_a_job_with_a_callback_gets_one_delivery_when_it_finishes(session: Session) -> None:
    job = finished_job(session, "https://hooks.example/sous")
    (delivery,) = session.execute(select(WebhookDelivery)).scalars()
    assert (delivery.job_id, delivery.url, delivery.state) == (
        job.id,
        "https://hooks.example/sous",
        "pending",
    )


def test_a_job_without_a_callback_gets_none(session: Session) -> None:
    finished_job(session, None)
    assert session.execute(select(WebhookDelivery)).first() is None


def test_claims_lease_rows_then_retry_with_backoff_and_give_up(session: Session) -> None:
    job = finished_job(session, "https://hooks.example/sous")
    (claimed,) = webhooks.claim_due(session, limit=10, lease_seconds=60)
    session.commit()
    assert claimed.job_id == job.id
    assert claimed.attempt == 1
    assert claimed.secret.startswith("whsec_")
    assert webhooks.claim_due(session, limit=10, lease_seconds=60) == []  # leased

    gave_up = webhooks.record_failure(
        session,
        claimed,
        "answered 500",
        status_code=500,
        max_attempts=2,
        backoff=10,
        backoff_max=60,
    )
    session.commit()
    assert not gave_up
    assert webhooks.claim_due(session, limit=10, lease_seconds=60) == []  # not due yet
    later = utcnow() + timedelta(seconds=11)
    (second,) = webhooks.claim_due(session, limit=10, lease_seconds=60, now=later)
    assert second.attempt == 2
    assert webhooks.record_failure(
        session,
        second,
        "answered 500",
        status_code=500,
        max_attempts=2,
        backoff=10,
        backoff_max=60,
    )
    session.commit()
    row = webhooks.deliveries_for(session, [job.id])[job.id]
    assert (row.state, row.attempts, row.last_status_code) == ("failed", 2, 500)
    assert jobs.get_job(session, job.id).state == "succeeded"  # the job itself is untouched


def test_an_expired_lease_lets_another_worker_retry(session: Session) -> None:
    finished_job(session, "https://hooks.example/sous")
    webhooks.claim_due(session, limit=1, lease_seconds=30)
    session.commit()
    after_lease = utcnow() + timedelta(seconds=31)
    (again,) = webhooks.claim_due(session, limit=1, lease_seconds=30, now=after_lease)
    assert again.attempt == 2


def test_success_is_recorded(session: Session) -> None:
    job = finished_job(session, "https://hooks.example/sous")
    (claimed,) = webhooks.claim_due(session, limit=1, lease_seconds=30)
    webhooks.record_success(session, claimed.id, 204)
    session.commit()
    row = webhooks.deliveries_for(session, [job.id])[job.id]
    assert (row.state, row.last_status_code, row.finished_at is not None) == (
        "delivered",
        204,
        True,
    )


def test_signatures_verify_and_reject_tampering_staleness_and_wrong_keys() -> None:
    body = b'{"id": "1"}'
    header = webhooks.sign("whsec_abc", body, timestamp=1_000_000)
    assert header.startswith("t=1000000,v1=")
    assert webhooks.verify("whsec_abc", body, header, now=1_000_010)
    assert not webhooks.verify("whsec_abc", body + b" ", header, now=1_000_010)
    assert not webhooks.verify("whsec_other", body, header, now=1_000_010)
    assert not webhooks.verify("whsec_abc", body, header, now=1_000_000 + 301)
    assert not webhooks.verify("whsec_abc", body, "v1=deadbeef", now=1_000_010)


def test_retry_delays_grow_and_stay_under_the_cap() -> None:
    for attempt, ceiling in ((1, 5.0), (2, 10.0), (3, 20.0), (10, 60.0)):
        delays = [webhooks.retry_delay(attempt, 5.0, 60.0) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
