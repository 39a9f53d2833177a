"""``GET /v1/jobs/{id}/events``: follow one job as Server-Sent Events until it finishes."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from sous_api.deps import PrincipalDep, run_db
from sous_api.errors import AUTHENTICATED_ROUTE_ERRORS, ApiError, error_responses
from sous_api.routes.jobs import read_job
from sous_api.schemas import JobResource
from sous_core.apikeys import Principal
from sous_core.db.models import Job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=AUTHENTICATED_ROUTE_ERRORS)

#: Seconds between two looks at the job's row (each a short transaction of its own).
POLL_INTERVAL_SECONDS = 0.5
#: Seconds without an event after which a ``: ping`` comment is sent, so that proxies
#: and load balancers do not close an idle stream.
PING_INTERVAL_SECONDS = 15.0

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _changed_job(session: Session, principal: Principal, job: JobResource) -> JobResource | None:
    """The job anew if its state, progress or ``updated_at`` moved since ``job``, else None."""
    row = session.execute(
        select(Job.state, Job.progress, Job.updated_at).where(
            Job.id == job.id, Job.tenant_id == principal.tenant_id
        )
    ).one_or_none()
    if row is not None and tuple(row) == (job.state.value, job.progress, job.updated_at):
        return None
    return read_job(session, principal, job.id)


def job_event(job: JobResource) -> str:
    return f"event: job\ndata: {job.model_dump_json()}\n\n"


async def _job_events(
    request: Request, principal: Principal, job: JobResource
) -> AsyncIterator[str]:
    yield job_event(job)
    last_sent = time.monotonic()
    while not job.state.is_terminal:
        await anyio.sleep(POLL_INTERVAL_SECONDS)
        if await request.is_disconnected():
            return
        try:
            changed = await run_db(_changed_job, principal, job)
        except ApiError:
            return  # The job was purged while being watched.
        if changed is not None:
            job = changed
            yield job_event(job)
            last_sent = time.monotonic()
        elif time.monotonic() - last_sent >= PING_INTERVAL_SECONDS:
            yield ": ping\n\n"
            last_sent = time.monotonic()


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "An event stream."},
        **error_responses(404),
    },
)
async def job_events(
    job_id: uuid.UUID, request: Request, principal: PrincipalDep
) -> StreamingResponse:
    """The job as Server-Sent Events: ``event: job`` with the job at once, then again each
    time its state or progress changes; the stream ends after the final state.

    Watch it with ``curl -N``; a ``: ping`` comment keeps a quiet stream open.
    """
    job = await run_db(read_job, principal, job_id)
    return StreamingResponse(
        _job_events(request, principal, job), media_type="text/event-stream", headers=STREAM_HEADERS
    )
