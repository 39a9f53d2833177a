"""``POST /v1/fetches``: fetch a URL in the background."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response, status

from sous_api.deps import CeleryDep, PrincipalDep, run_db
from sous_api.routes.jobs import job_accepted
from sous_api.schemas import JobResource
from sous_api.submission import submit_job
from sous_core.params import FetchParams
from sous_core.tasks import JobKind

router = APIRouter(prefix="/v1/fetches", tags=["fetches"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobResource)
async def submit_fetch(
    body: FetchParams,
    request: Request,
    response: Response,
    principal: PrincipalDep,
    celery: CeleryDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JobResource:
    """Queue a fetch of ``url``; follow the job at the ``Location`` it returns."""
    job, replayed = await run_db(
        submit_job, celery, principal, JobKind.FETCH, body.model_dump(), idempotency_key
    )
    return job_accepted(request, response, job, replayed)
