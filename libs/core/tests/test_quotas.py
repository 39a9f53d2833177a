"""Daily quotas on a real (SQLite) database, with the clock passed in."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sous_core import apikeys, quotas
from sous_core.db.models import Job, TenantUsage
from sous_core.quotas import QuotaStatus
from sous_core.submissions import SubmissionRefused, request_fingerprint, submit_job

NOW = datetime(2026, 11, 22, 21, 30, 15, 500000, tzinfo=UTC)
#: Seconds from ``NOW`` to the next UTC midnight, rounded up.
UNTIL_MIDNIGHT = 2 * 3600 + 29 * 60 + 45
FETCH = {"url": "https://example.com/"}


@pytest.fixture
def tenant_id(session: Session) -> uuid.UUID:
    tenant, _ = apikeys.get_or_create_tenant(session, "acme")
    session.commit()
    return tenant.id


def charge_fetches(session: Session, tenant_id: uuid.UUID, count: int, now: datetime = NOW):
    for _ in range(count):
        quotas.charge(session, tenant_id, "fetch", FETCH, now)
        session.commit()


def used(session: Session, tenant_id: uuid.UUID, metric: str, now: datetime = NOW) -> int:
    return {s.metric: s.used for s in quotas.quotas_of(session, tenant_id, now)}[metric]


def test_every_metric_is_unlimited_by_default(session: Session, tenant_id: uuid.UUID) -> None:
    charge_fetches(session, tenant_id, 50)
    quotas.charge(session, tenant_id, "fetch_batch", {"urls": ["a"] * 20}, NOW)
    session.commit()
    assert quotas.quotas_of(session, tenant_id, NOW) == [
        QuotaStatus("jobs:fetch", None, 70),
        QuotaStatus("jobs:email", None, 0),
        QuotaStatus("jobs:transcode", None, 0),
        QuotaStatus("transcode_input_minutes", None, 0),
    ]


def test_a_limit_of_k_allows_k_jobs_then_refuses_with_a_retry_after(
    session: Session, tenant_id: uuid.UUID
) -> None:
    quotas.set_quota(session, tenant_id, "jobs:fetch", 3)
    session.commit()
    charge_fetches(session, tenant_id, 3)

    with pytest.raises(SubmissionRefused) as refused:
        quotas.charge(session, tenant_id, "fetch", FETCH, NOW)
    assert (refused.value.status, refused.value.code) == (429, "quota_exceeded")
    assert refused.value.message == (
        "Daily quota for jobs:fetch is spent (3 of 3 used today, UTC); "
        "it resets at 2026-11-23T00:00:00Z."
    )
    assert refused.value.retry_after == UNTIL_MIDNIGHT
    session.rollback()
    assert used(session, tenant_id, "jobs:fetch") == 3
    # Other metrics have their own limits.
    quotas.charge(session, tenant_id, "email", {}, NOW)


def test_retry_after_is_at_least_one_second(session: Session, tenant_id: uuid.UUID) -> None:
    quotas.set_quota(session, tenant_id, "jobs:email", 0)
    quotas.set_quota(session, tenant_id, "jobs:fetch", 1)
    last_moment = datetime(2026, 11, 22, 23, 59, 59, 999999, tzinfo=UTC)
    charge_fetches(session, tenant_id, 1, last_moment)
    with pytest.raises(SubmissionRefused) as refused:
        quotas.charge(session, tenant_id, "fetch", FETCH, last_moment)
    assert refused.value.retry_after == 1


def test_a_batch_charges_one_unit_per_url(session: Session, tenant_id: uuid.UUID) -> None:
    quotas.set_quota(session, tenant_id, "jobs:fetch", 5)
    quotas.charge(session, tenant_id, "fetch_batch", {"urls": ["a", "b", "c"]}, NOW)
    session.commit()
    assert used(session, tenant_id, "jobs:fetch") == 3

    with pytest.raises(SubmissionRefused) as refused:
        quotas.charge(session, tenant_id, "fetch_batch", {"urls": ["a", "b", "c"]}, NOW)
    assert refused.value.message == (
        "Daily quota for jobs:fetch has 2 left, too few for this job's 3 "
        "(3 of 5 used today, UTC); it resets at 2026-11-23T00:00:00Z."
    )
    assert refused.value.retry_after == UNTIL_MIDNIGHT
    session.rollback()
    quotas.charge(session, tenant_id, "fetch_batch", {"urls": ["a", "b"]}, NOW)
    session.commit()
    assert used(session, tenant_id, "jobs:fetch") == 5


def test_a_job_larger_than_the_whole_limit_gets_no_retry_after(
    session: Session, tenant_id: uuid.UUID
) -> None:
    quotas.set_quota(session, tenant_id, "jobs:fetch", 2)
    quotas.set_quota(session, tenant_id, "jobs:email", 0)
    with pytest.raises(SubmissionRefused) as too_big:
        quotas.charge(session, tenant_id, "fetch_batch", {"urls": ["a", "b", "c"]}, NOW)
    assert too_big.value.status == 429
    assert too_big.value.retry_after is None
    assert "needs 3 units of jobs:fetch, more than its daily quota of 2" in too_big.value.message
    with pytest.raises(SubmissionRefused) as blocked:
        quotas.charge(session, tenant_id, "email", {}, NOW)
    assert (
        blocked.value.message == "The daily quota for jobs:email is 0: this tenant may not use it."
    )
    assert blocked.value.retry_after is None
    assert used(session, tenant_id, "jobs:fetch") == 0


def test_the_next_utc_day_starts_at_zero(session: Session, tenant_id: uuid.UUID) -> None:
    quotas.set_quota(session, tenant_id, "jobs:fetch", 2)
    charge_fetches(session, tenant_id, 2)
    with pytest.raises(SubmissionRefused):
        quotas.charge(session, tenant_id, "fetch", FETCH, NOW)
    session.rollback()

    # 23:30 in New York on the 22nd is already the 23rd in UTC.
    next_day = datetime.fromisoformat("2026-11-22T23:30:00-05:00")
    assert quotas.utc_day(next_day) == date(2026, 11, 23)
    assert used(session, tenant_id, "jobs:fetch", next_day) == 0
    charge_fetches(session, tenant_id, 2, next_day)
    assert used(session, tenant_id, "jobs:fetch", next_day) == 2
    assert used(session, tenant_id, "jobs:fetch", NOW) == 2


def test_refund_gives_the_units_back_and_never_goes_below_zero(
    session: Session, tenant_id: uuid.UUID
) -> None:
    quotas.set_quota(session, tenant_id, "jobs:fetch", 3)
    quotas.charge(session, tenant_id, "fetch_batch", {"urls": ["a", "b", "c"]}, NOW)
    session.commit()
    quotas.refund(session, tenant_id, "fetch_batch", {"urls": ["a", "b"]}, NOW.date())
    session.commit()
    assert used(session, tenant_id, "jobs:fetch") == 1
    charge_fetches(session, tenant_id, 2)
    quotas.refund(session, tenant_id, "fetch_batch", {"urls": ["a"] * 10}, NOW.date())
    assert used(session, tenant_id, "jobs:fetch") == 0
    # A refund for a day with no usage changes nothing.
    quotas.refund(session, tenant_id, "email", {}, NOW.date())
    assert used(session, tenant_id, "jobs:email") == 0


def test_set_quota_none_removes_the_limit(session: Session, tenant_id: uuid.UUID) -> None:
    quotas.set_quota(session, tenant_id, "jobs:fetch", 1)
    quotas.set_quota(session, tenant_id, "jobs:fetch", 2)
    charge_fetches(session, tenant_id, 2)
    with pytest.raises(SubmissionRefused):
        quotas.charge(session, tenant_id, "fetch", FETCH, NOW)
    session.rollback()

    quotas.set_quota(session, tenant_id, "jobs:fetch", None)
    quotas.set_quota(session, tenant_id, "jobs:fetch", None)
    session.commit()
    charge_fetches(session, tenant_id, 3)
    assert quotas.quotas_of(session, tenant_id, NOW)[0] == QuotaStatus("jobs:fetch", None, 5)


def test_transcodes_are_refused_once_their_minutes_are_spent(
    session: Session, tenant_id: uuid.UUID
) -> None:
    quotas.set_quota(session, tenant_id, "transcode_input_minutes", 60)
    quotas.charge(session, tenant_id, "transcode", {}, NOW)
    # The worker adds the minutes after probing, beyond the limit if the video is long.
    assert quotas.add_usage(session, tenant_id, "transcode_input_minutes", 45, NOW) == 45
    quotas.charge(session, tenant_id, "transcode", {}, NOW)
    assert quotas.add_usage(session, tenant_id, "transcode_input_minutes", 30, NOW) == 75
    session.commit()

    with pytest.raises(SubmissionRefused) as refused:
        quotas.charge(session, tenant_id, "transcode", {}, NOW)
    assert refused.value.message == (
        "Daily quota for transcode_input_minutes is spent (75 of 60 used today, UTC); "
        "it resets at 2026-11-23T00:00:00Z."
    )
    assert refused.value.retry_after == UNTIL_MIDNIGHT
    session.rollback()
    assert used(session, tenant_id, "jobs:transcode") == 2
    # Other kinds do not depend on transcode minutes.
    charge_fetches(session, tenant_id, 1)


def test_prune_usage_keeps_the_recent_days(
    session: Session, tenant_id: uuid.UUID, caplog: pytest.LogCaptureFixture
) -> None:
    today = NOW.date()
    for age in range(10):
        charge_fetches(session, tenant_id, 1, NOW - timedelta(days=age))
    caplog.set_level(logging.INFO, logger="sous.quotas")

    assert quotas.prune_usage(session, today, keep_days=7) == 2
    session.commit()
    days = session.execute(select(TenantUsage.day).order_by(TenantUsage.day)).scalars().all()
    assert days == [today - timedelta(days=age) for age in range(7, -1, -1)]
    assert "pruned 2 quota usage rows from before 2026-11-15" in caplog.text
    assert quotas.prune_usage(session, today, keep_days=7) == 0


def test_unknown_metrics_and_bad_amounts_are_refused(
    session: Session, tenant_id: uuid.UUID
) -> None:
    with pytest.raises(ValueError, match=r"unknown quota metric 'jobs:fetches'; known: jobs:fetch"):
        quotas.set_quota(session, tenant_id, "jobs:fetches", 1)
    with pytest.raises(ValueError, match="negative"):
        quotas.set_quota(session, tenant_id, "jobs:fetch", -1)
    with pytest.raises(ValueError, match="only grows"):
        quotas.add_usage(session, tenant_id, "transcode_input_minutes", -5, NOW)
    with pytest.raises(ValueError, match="job kind 'carve' has no quota metric"):
        quotas.charge(session, tenant_id, "carve", {}, NOW)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def unreachable_broker() -> Iterator[Celery]:
    app = Celery("quota-tests", broker=f"amqp://guest:guest@127.0.0.1:{closed_port()}//")
    yield app
    app.close()


def jobs_of(session: Session, tenant_id: uuid.UUID) -> int:
    return session.execute(
        select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id)
    ).scalar_one()


def test_submit_job_refuses_over_quota_without_writing_a_job(
    session: Session, tenant_id: uuid.UUID, unreachable_broker: Celery
) -> None:
    quotas.set_quota(session, tenant_id, "jobs:fetch", 0)
    session.commit()
    with pytest.raises(SubmissionRefused) as refused:
        submit_job(session, unreachable_broker, tenant_id, "fetch", FETCH, now=NOW)
    assert refused.value.code == "quota_exceeded"
    assert jobs_of(session, tenant_id) == 0


def test_submit_job_refunds_a_job_the_broker_refused(
    session: Session, tenant_id: uuid.UUID, unreachable_broker: Celery
) -> None:
    quotas.set_quota(session, tenant_id, "jobs:fetch", 3)
    session.commit()
    batch = {"urls": ["https://example.com/a", "https://example.com/b"]}
    with pytest.raises(SubmissionRefused) as refused:
        submit_job(session, unreachable_broker, tenant_id, "fetch_batch", batch, now=NOW)
    assert refused.value.code == "broker_unavailable"
    assert used(session, tenant_id, "jobs:fetch") == 0
    assert session.execute(select(Job.state)).scalar_one() == "failed"


def test_an_idempotent_replay_is_not_charged(
    session: Session, tenant_id: uuid.UUID, unreachable_broker: Celery
) -> None:
    session.add(
        Job(
            tenant_id=tenant_id,
            kind="fetch",
            params=FETCH,
            state="queued",
            idempotency_key="order-42",
            request_sha256=request_fingerprint("fetch", FETCH, None),
        )
    )
    quotas.set_quota(session, tenant_id, "jobs:fetch", 0)
    session.commit()
    job, replayed = submit_job(
        session, unreachable_broker, tenant_id, "fetch", FETCH, "order-42", now=NOW
    )
    assert replayed
    assert job.idempotency_key == "order-42"
    assert used(session, tenant_id, "jobs:fetch") == 0
