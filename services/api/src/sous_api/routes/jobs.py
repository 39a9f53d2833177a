"""``/v1/jobs``: read, list and cancel a tenant's jobs."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Annotated

from celery import Celery
from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from sous_api.deps import CeleryDep, PrincipalDep, run_db
from sous_api.errors import ApiError
from sous_api.schemas import JobList, JobResource
from sous_core import jobs, storage, webhooks
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


def _resource(session: Session, job: Job) -> JobResource:
    return JobResource.from_job(job, webhooks.deliveries_for(session, [job.id]).get(job.id))


def _read_job(session: Session, principal: Principal, job_id: uuid.UUID) -> JobResource:
    return _resource(session, _tenant_job(session, principal, job_id))


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
    parent_id: uuid.UUID | None,
    schedule_id: uuid.UUID | None,
) -> JobList:
    try:
        page = jobs.list_jobs(
            session,
            principal.tenant_id,
            limit=limit,
            cursor=cursor,
            kind=kind,
            state=state,
            parent_id=parent_id,
            schedule_id=schedule_id,
        )
    except jobs.InvalidCursor as exc:
        raise ApiError(400, "invalid_cursor", str(exc)) from None
    deliveries = webhooks.deliveries_for(session, [job.id for job in page.jobs])
    return JobList(
        items=[JobResource.from_job(job, deliveries.get(job.id)) for job in page.jobs],
        next_cursor=page.next_cursor,
    )


@router.get("", response_model=JobList)
async def list_jobs(
    principal: PrincipalDep,
    kind: Annotated[str | None, Query(max_length=32, description="Only jobs of this kind.")] = None,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=jobs.MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    parent_id: Annotated[
        uuid.UUID | None, Query(description="Only the jobs of this batch (default: no batch jobs).")
    ] = None,
    schedule_id: Annotated[
        uuid.UUID | None, Query(description="Only the jobs this schedule created.")
    ] = None,
) -> JobList:
    """The tenant's jobs, newest first; follow ``next_cursor`` for older ones.

    The jobs a batch fanned out into are listed only with ``parent_id``.
    """
    return await run_db(_list_jobs, principal, limit, cursor, kind, state, parent_id, schedule_id)


def _output_file(session: Session, principal: Principal, job_id: uuid.UUID) -> tuple[Path, str]:
    job = _tenant_job(session, principal, job_id)
    output = (job.result or {}).get("output")
    if job.state != JobState.SUCCEEDED.value or not isinstance(output, dict):
        raise ApiError(
            404,
            "no_output",
            f"Job {job_id} has no stored output (it is {job.state}; fetches store their "
            'body only with "store_body": true).',
        )
    path = storage.output_path(get_settings().storage_dir, job.id)
    if not path.is_file():
        raise ApiError(410, "output_gone", f"The output of job {job_id} is no longer stored.")
    return path, str(output.get("content_type") or "application/octet-stream")


@router.get(
    "/{job_id}/output",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def download_output(job_id: uuid.UUID, principal: PrincipalDep) -> FileResponse:
    """The job's stored output (a fetched body, a transcoded file), streamed."""
    path, content_type = await run_db(_output_file, principal, job_id)
    return FileResponse(
        path,
        media_type=content_type,
        filename=f"{job_id}.out",
        content_disposition_type="attachment",
        # The bytes came from elsewhere: never let a browser run them as this API's page.
        headers={"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"},
    )


def _cancel_job(session: Session, principal: Principal, job_id: uuid.UUID) -> JobResource:
    job = _tenant_job(session, principal, job_id)
    if job.job_state.is_terminal:
        raise ApiError(409, "job_finished", f"The job already {job.state}; nothing to cancel.")
    job = jobs.request_cancel(session, job)
    session.commit()
    return _resource(session, job)


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
