"""Submitting a job from an HTTP request: the core submission path, answered in HTTP terms."""

from __future__ import annotations

from typing import Any

from celery import Celery
from fastapi import Request
from sqlalchemy.orm import Session

from sous_api.errors import ApiError
from sous_api.schemas import JobResource
from sous_api.submission_batches import SubmissionBatcher
from sous_core import submissions
from sous_core.apikeys import Principal


async def submit(
    request: Request,
    principal: Principal,
    kind: str,
    params: dict[str, Any],
    idempotency_key: str | None = None,
    callback_url: str | None = None,
) -> tuple[JobResource, bool]:
    """Create and enqueue the principal's job; ``(job, replayed)`` or raises ApiError.

    The job is submitted in a batch with other requests' (``SubmissionBatcher``) and
    comes back ``queued`` (a replay of an ``Idempotency-Key`` comes back as it is).
    """
    batcher: SubmissionBatcher = request.app.state.submission_batcher
    try:
        key = submissions.check_idempotency_key(idempotency_key)
        submission = submissions.Submission(principal.tenant_id, kind, params, callback_url, key)
        job, replayed = await batcher.submit(submission)
    except submissions.SubmissionRefused as exc:
        raise refusal_error(exc) from exc
    return job, replayed


def submit_job(
    session: Session,
    celery: Celery,
    principal: Principal,
    kind: str,
    params: dict[str, Any],
    idempotency_key: str | None = None,
    callback_url: str | None = None,
) -> tuple[JobResource, bool]:
    """Create and enqueue the principal's job on its own (uploads: the route settles its
    file with the outcome); returns ``(job, replayed)`` or raises ApiError."""
    try:
        job, replayed = submissions.submit_job(
            session,
            celery,
            principal.tenant_id,
            kind,
            params,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            # Marked queued by the route, in a batch with other requests' jobs.
            queue_mark=False,
        )
    except submissions.SubmissionRefused as exc:
        raise refusal_error(exc) from exc
    return JobResource.from_job(job), replayed


def refusal_error(exc: submissions.SubmissionRefused) -> ApiError:
    """A refused submission in HTTP terms: its status, code and message."""
    headers = None if exc.retry_after is None else {"Retry-After": str(exc.retry_after)}
    return ApiError(exc.status, exc.code, exc.message, headers=headers)
