"""``POST /v1/fetches``: fetch one URL, or many in parallel, in the background."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response, status

from sous_api.deps import PrincipalDep
from sous_api.errors import AUTHENTICATED_ROUTE_ERRORS, error_responses
from sous_api.routes.jobs import job_accepted
from sous_api.schemas import JobResource
from sous_api.submission import submit
from sous_core.job_requests import FetchRequest

router = APIRouter(prefix="/v1/fetches", tags=["fetches"], responses=AUTHENTICATED_ROUTE_ERRORS)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobResource,
    responses=error_responses(400, 413, 503),
)
async def submit_fetch(
    body: FetchRequest,
    request: Request,
    response: Response,
    principal: PrincipalDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JobResource:
    """Queue a fetch of ``url`` (or a batch of ``urls``); follow it at ``Location``.

    A batch is one job whose result lists every URL's outcome once all have finished;
    one failing URL does not fail the others. Its progress is the share finished.
    """
    job_request = body.submission()
    job, replayed = await submit(
        request,
        principal,
        job_request.kind,
        job_request.params,
        idempotency_key,
        job_request.callback_url,
    )
    return await job_accepted(request, response, job, replayed)
