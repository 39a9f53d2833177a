"""Turning a request into a job: row first, then the confirmed publish, then ``queued``.

The API answers 202 only once both the row is committed and RabbitMQ confirmed the
message. If the broker fails, the row is marked failed (so nothing is half-written)
and the caller gets a 503 it can retry, with the same ``Idempotency-Key`` if it wants.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from celery import Celery
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sous_api.errors import ApiError
from sous_api.schemas import JobResource
from sous_core import jobs
from sous_core.apikeys import Principal
from sous_core.db.models import Job
from sous_core.enqueue import BrokerUnavailable, publish_job
from sous_core.states import IllegalTransition, JobState

logger = logging.getLogger("sous.api")

#: Longest ``Idempotency-Key`` accepted.
MAX_IDEMPOTENCY_KEY_LENGTH = 255
#: Seconds a client is told to wait before retrying after a broker failure.
BROKER_RETRY_AFTER_SECONDS = 5


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
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable characters.",
        )
    return key


def _replay(job: Job, fingerprint: str) -> Job:
    if job.request_sha256 != fingerprint:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different request body.",
        )
    return job


def _find_by_key(session: Session, principal: Principal, key: str) -> Job | None:
    return session.execute(
        select(Job).where(Job.tenant_id == principal.tenant_id, Job.idempotency_key == key)
    ).scalar_one_or_none()


def submit_job(
    session: Session,
    celery: Celery,
    principal: Principal,
    kind: str,
    params: dict[str, Any],
    idempotency_key: str | None = None,
    callback_url: str | None = None,
) -> tuple[JobResource, bool]:
    """Create and enqueue a job; returns ``(job, replayed)``."""
    key = check_idempotency_key(idempotency_key)
    fingerprint = request_fingerprint(kind, params, callback_url)
    if key is not None:
        existing = _find_by_key(session, principal, key)
        if existing is not None:
            return JobResource.from_job(_replay(existing, fingerprint)), True
    job = Job(
        tenant_id=principal.tenant_id,
        kind=kind,
        params=params,
        state=JobState.PENDING.value,
        idempotency_key=key,
        request_sha256=fingerprint,
        callback_url=callback_url,
    )
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        # Another request with the same key won the race; answer with its job.
        session.rollback()
        existing = _find_by_key(session, principal, key) if key else None
        if existing is None:
            raise
        return JobResource.from_job(_replay(existing, fingerprint)), True

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
        session.commit()
        raise ApiError(
            503,
            "broker_unavailable",
            "The job queue is unavailable right now; nothing was queued. Retry shortly.",
            headers={"Retry-After": str(BROKER_RETRY_AFTER_SECONDS)},
        ) from exc

    try:
        job = jobs.transition(session, job.id, JobState.QUEUED, only_from={JobState.PENDING})
        session.commit()
    except IllegalTransition:
        # A worker already picked the job up; report the state it has now.
        session.rollback()
        job = jobs.get_job(session, job.id)
    return JobResource.from_job(job), False
