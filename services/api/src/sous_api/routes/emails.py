"""``POST /v1/emails``: send an email in the background."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response, status

from sous_api.deps import PrincipalDep
from sous_api.errors import AUTHENTICATED_ROUTE_ERRORS, error_responses
from sous_api.routes.jobs import job_accepted
from sous_api.schemas import JobResource
from sous_api.submission import refusal_error, submit
from sous_core.job_requests import EmailRequest
from sous_core.submissions import SubmissionRefused

router = APIRouter(prefix="/v1/emails", tags=["emails"], responses=AUTHENTICATED_ROUTE_ERRORS)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobResource,
    responses=error_responses(400, 413, 503),
)
async def submit_email(
    body: EmailRequest,
    request: Request,
    response: Response,
    principal: PrincipalDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JobResource:
    """Queue an email; it is sent over SMTP at most once, retried while the server is down.

    Send an ``Idempotency-Key`` to make retrying this request safe.
    """
    try:
        job_request = body.submission()
    except SubmissionRefused as exc:
        raise refusal_error(exc) from exc
    job, replayed = await submit(
        request,
        principal,
        job_request.kind,
        job_request.params,
        idempotency_key,
        job_request.callback_url,
    )
    return await job_accepted(request, response, job, replayed)
