"""``/v1/jobs``: read, list and cancel a tenant's jobs."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated

from celery import Celery
from fastapi import APIRouter, Query, Request, Response, status
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from sous_api.deps import CeleryDep, PrincipalDep, run_db
from sous_api.errors import ApiError
from sous_api.schemas import JobList, JobResource
from sous_core import jobs
from sous_core.apikeys import Principal
from sous_core.db.models import Job
from sous_core.settings import get_settings
from sous_core.states import JobState

logger = logging.getLogger("sous.api")

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def job_url(request: Request, job_id: uuid.UUID) -> str:
    base = get_settings().public_url.rstrip("/") or str(request.base_url).rstrip("/")
    return f"{base}/v1/jobs/{job_id}"


def job_accepted(
    request: Request, response: Response, job: JobResource, replayed: bool
) -> JobResource:
    """Headers of a 202: where to follow the job, and whether this was a replay."""
    response.headers["Location"] = job_url(request, job.id)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return job


def _tenant_job(session: Session, principal: Principal, job_id: uuid.UUID) -> Job:
    try:
        return jobs.get_job(session, job_id, tenant_id=principal.tenant_id)
    except jobs.JobNotFound:
        raise ApiError(404, "job_not_found", f"No job with id {job_id}.") from None


def _read_job(session: Session, principal: Principal, job_id: uuid.UUID) -> JobResource:
    return JobResource.from_job(_tenant_job(session, principal, job_id))


@router.get("/{job_id}", response_model=JobResource)
async def get_job(job_id: uuid.UUID, principal: PrincipalDep) -> JobResource:
    """A job's state, progress, timestamps, attempts, and result or error."""
    return await run_db(_read_job, principal, job_id)


def _list_jobs(
    session: Session,
    principal: Principal,
    limit: int,
    cursor: str | None,
    kind: str | None,
    state: JobState | None,
) -> JobList:
    try:
        page = jobs.list_jobs(
            session, principal.tenant_id, limit=limit, cursor=cursor, kind=kind, state=state
        )
    except jobs.InvalidCursor as exc:
        raise ApiError(400, "invalid_cursor", str(exc)) from None
    return JobList(
        items=[JobResource.from_job(job) for job in page.jobs], next_cursor=page.next_cursor
    )


@router.get("", response_model=JobList)
async def list_jobs(
    principal: PrincipalDep,
    kind: Annotated[str | None, Query(max_length=32, description="Only jobs of this kind.")] = None,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=jobs.MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> JobList:
    """The tenant's jobs, newest first; follow ``next_cursor`` for older ones."""
    return await run_db(_list_jobs, principal, limit, cursor, kind, state)


def _cancel_job(session: Session, principal: Principal, job_id: uuid.UUID) -> JobResource:
    job = _tenant_job(session, principal, job_id)
    if job.job_state.is_terminal:
        raise ApiError(409, "job_finished", f"The job already {job.state}; nothing to cancel.")
    job = jobs.request_cancel(session, job)
    session.commit()
    return JobResource.from_job(job)


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobResource)
async def cancel_job(job_id: uuid.UUID, principal: PrincipalDep, celery: CeleryDep) -> JobResource:
    """Cancel a job: a queued one never runs; a running one is asked to stop."""
    job = await run_db(_cancel_job, principal, job_id)
    if job.state is JobState.CANCELLED:
        await run_in_threadpool(_revoke, celery, job.id)
    return job


def _revoke(celery: Celery, job_id: uuid.UUID) -> None:
    # Workers skip cancelled jobs anyway; revoking only spares them loading the row.
    try:
        celery.control.revoke(str(job_id))
    except Exception as exc:
        logger.warning("revoking job %s failed (the job stays cancelled): %r", job_id, exc)
