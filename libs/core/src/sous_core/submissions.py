"""Turning a submission into a job: row first, then the confirmed publish, then ``queued``.

The one path for every job a client asks for, whether through the API or fired by a
schedule. A submission is accepted only once the row is committed and RabbitMQ
confirmed the message. If the broker fails, the row is marked failed (so nothing is
half-written) and the caller is refused with a retryable error, which it may retry
with the same ``Idempotency-Key``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import datetime
from typing import Any

from celery import Celery
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sous_core import jobs, metrics, quotas
from sous_core.db.models import Job, utcnow
from sous_core.enqueue import BrokerUnavailable, publish_job
from sous_core.states import IllegalTransition, JobState

logger = logging.getLogger("sous.submissions")

#: Longest ``Idempotency-Key`` accepted.
MAX_IDEMPOTENCY_KEY_LENGTH = 255
#: Seconds a client is told to wait before retrying after a broker failure.
BROKER_RETRY_AFTER_SECONDS = 5


class SubmissionRefused(Exception):
    """The job was not accepted; ``status`` is the HTTP status the API answers with."""

    def __init__(
        self, status: int, code: str, message: str, *, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


def request_fingerprint(kind: str, params: dict[str, Any], callback_url: str | None) -> str:
    canonical = json.dumps(
        {"kind": kind, "params": params, "callback_url": callback_url},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or not key.isprintable():
        raise SubmissionRefused(
            400,
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable characters.",
        )
    return key


def _replay(job: Job, fingerprint: str) -> Job:
    if job.request_sha256 != fingerprint:
        raise SubmissionRefused(
            422,
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different request body.",
        )
    return job


def _find_by_key(session: Session, tenant_id: uuid.UUID, key: str) -> Job | None:
    return session.execute(
        select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key)
    ).scalar_one_or_none()


def _create_and_charge(session: Session, job: Job, charge: quotas.Charge) -> bool:
    """Write the job row and charge its quota in one transaction; False if the quota refused.

    The charge locks the tenant's usage row, which every submission of the tenant
    updates, until the commit: it is the last statement before the commit so that
    concurrent submissions queue behind it as briefly as can be.
    """
    session.add(job)
    session.flush()
    if session.execute(quotas.usage_upsert(session, charge)).scalar_one_or_none() is None:
        session.rollback()
        return False
    session.commit()
    return True


def submit_job(
    session: Session,
    celery: Celery,
    tenant_id: uuid.UUID,
    kind: str,
    params: dict[str, Any],
    idempotency_key: str | None = None,
    callback_url: str | None = None,
    schedule_id: uuid.UUID | None = None,
    now: datetime | None = None,
) -> tuple[Job, bool]:
    """Create and enqueue a job; returns ``(job, replayed)``.

    The job is charged to the tenant's daily quota (``now``'s UTC day, the current time
    by default) in the transaction that creates it; a replay is not charged again.
    Raises :class:`SubmissionRefused` when the job is not accepted.
    """
    key = check_idempotency_key(idempotency_key)
    fingerprint = request_fingerprint(kind, params, callback_url)
    if key is not None:
        existing = _find_by_key(session, tenant_id, key)
        if existing is not None:
            return _replay(existing, fingerprint), True
    now = utcnow() if now is None else now
    try:
        charge = quotas.prepare_charge(session, tenant_id, kind, params, now)
    except SubmissionRefused:
        session.rollback()
        metrics.API_QUOTA_REJECTIONS.labels(kind=kind).inc()
        raise
    job = Job(
        tenant_id=tenant_id,
        kind=kind,
        params=params,
        state=JobState.PENDING.value,
        idempotency_key=key,
        request_sha256=fingerprint,
        callback_url=callback_url,
        schedule_id=schedule_id,
    )
    try:
        charged = _create_and_charge(session, job, charge)
    except IntegrityError:
        # Another request with the same key won the race; answer with its job.
        session.rollback()
        existing = _find_by_key(session, tenant_id, key) if key else None
        if existing is None:
            raise
        return _replay(existing, fingerprint), True
    if not charged:
        refusal = quotas.refusal(session, charge, now)
        session.rollback()
        metrics.API_QUOTA_REJECTIONS.labels(kind=kind).inc()
        raise refusal

    try:
        publish_job(celery, job)
    except BrokerUnavailable as exc:
        # Free the key so that retrying the same request makes a fresh attempt.
        jobs.transition(
            session,
            job.id,
            JobState.FAILED,
            error_code="broker_unavailable",
            error_message="The job could not be queued because the message broker was "
            "unavailable. Retry the request.",
            idempotency_key=None,
        )
        quotas.refund(session, tenant_id, kind, params, quotas.utc_day(now))
        session.commit()
        metrics.API_BROKER_UNAVAILABLE.labels(kind=kind).inc()
        raise SubmissionRefused(
            503,
            "broker_unavailable",
            "The job queue is unavailable right now; nothing was queued. Retry shortly.",
            retry_after=BROKER_RETRY_AFTER_SECONDS,
        ) from exc

    metrics.JOBS_SUBMITTED.labels(kind=kind).inc()
    try:
        job = jobs.transition(session, job.id, JobState.QUEUED, only_from={JobState.PENDING})
        session.commit()
    except IllegalTransition:
        # A worker already picked the job up; report the state it has now.
        session.rollback()
        job = jobs.get_job(session, job.id)
    return job, False
