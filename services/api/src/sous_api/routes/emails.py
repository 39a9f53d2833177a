"""``POST /v1/emails``: send an email in the background."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response, status
from pydantic import Field, field_validator

from sous_api.deps import CeleryDep, PrincipalDep, run_db
from sous_api.errors import ApiError
from sous_api.routes.jobs import job_accepted
from sous_api.schemas import JobResource
from sous_api.submission import submit_job
from sous_core.email_params import EmailParams
from sous_core.params import check_callback_url
from sous_core.settings import get_settings
from sous_core.tasks import JobKind

router = APIRouter(prefix="/v1/emails", tags=["emails"])


class EmailRequest(EmailParams):
    callback_url: str | None = Field(
        default=None, description="POSTed the finished job (signed, see the README)."
    )

    @field_validator("callback_url")
    @classmethod
    def _valid_callback(cls, url: str | None) -> str | None:
        return check_callback_url(url)


def check_limits(email: EmailParams) -> None:
    """Refuse an email past the configured recipient and body limits."""
    settings = get_settings()
    recipients = email.recipient_count()
    if recipients > settings.mail_max_recipients:
        raise ApiError(
            422,
            "too_many_recipients",
            f"An email may have at most {settings.mail_max_recipients} recipients "
            f"(to + cc + bcc); this one has {recipients}.",
        )
    size = email.body_bytes()
    if size > settings.mail_max_body_bytes:
        raise ApiError(
            413,
            "email_too_large",
            f"The email body is {size} bytes; at most {settings.mail_max_body_bytes} "
            "are accepted (text and html together).",
        )


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobResource)
async def submit_email(
    body: EmailRequest,
    request: Request,
    response: Response,
    principal: PrincipalDep,
    celery: CeleryDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JobResource:
    """Queue an email; it is sent over SMTP at most once, retried while the server is down.

    Send an ``Idempotency-Key`` to make retrying this request safe.
    """
    check_limits(body)
    params = body.model_dump(exclude={"callback_url"})
    job, replayed = await run_db(
        submit_job, celery, principal, JobKind.EMAIL, params, idempotency_key, body.callback_url
    )
    return job_accepted(request, response, job, replayed)
