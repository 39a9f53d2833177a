"""Request bodies of each job kind, and turning one into a submission (API and schedules alike).

The API validates ``POST /v1/fetches`` and ``POST /v1/emails`` bodies with these
models; a schedule stores the same body under its kind and the scheduler turns it into
a submission with :func:`parse_job`, so a scheduled job is checked exactly like one
submitted by hand:

>>> parse_job({"kind": "fetch", "url": "https://example.com/feed"}).params
{'url': 'https://example.com/feed', 'store_body': False}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sous_core.email_params import EmailParams
from sous_core.params import (
    MAX_URL_LENGTH,
    FetchBatchParams,
    FetchParams,
    check_callback_url,
    check_fetch_url,
)
from sous_core.settings import get_settings
from sous_core.submissions import SubmissionRefused
from sous_core.tasks import JobKind


@dataclass(frozen=True)
class JobSubmission:
    """What :func:`sous_core.submissions.submit_job` needs besides the tenant."""

    kind: str
    params: dict[str, Any]
    callback_url: str | None = None


class InvalidJob(ValueError):
    """A job body that its kind's request model refuses; ``problems`` are (field, reason)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {reason}" for field, reason in problems))
        self.problems = problems


class FetchRequest(BaseModel):
    """Either ``url`` (one fetch) or ``urls`` (a batch: one job, a child job per URL)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"url": "https://example.com/"},
                {"urls": ["https://example.com/a", "https://example.com/b"], "store_body": True},
            ]
        },
    )

    url: str | None = Field(
        default=None, max_length=MAX_URL_LENGTH, description="One absolute http(s) URL."
    )
    urls: list[str] | None = Field(
        default=None, min_length=1, description="Many URLs, fetched in parallel as one batch job."
    )
    store_body: bool = Field(
        default=False,
        description="Keep each response body; download it from ``GET /v1/jobs/{id}/output``.",
    )
    callback_url: str | None = Field(
        default=None, description="POSTed the finished job (signed, see the README)."
    )

    @field_validator("url")
    @classmethod
    def _valid_url(cls, url: str | None) -> str | None:
        return None if url is None else check_fetch_url(url)

    @field_validator("urls")
    @classmethod
    def _valid_urls(cls, urls: list[str] | None) -> list[str] | None:
        if urls is None:
            return None
        limit = get_settings().fetch_max_batch
        if len(urls) > limit:
            raise ValueError(f"a batch may hold at most {limit} URLs; this one has {len(urls)}")
        return FetchBatchParams(urls=urls).urls

    @field_validator("callback_url")
    @classmethod
    def _valid_callback(cls, url: str | None) -> str | None:
        return check_callback_url(url)

    @model_validator(mode="after")
    def _one_form(self) -> FetchRequest:
        if (self.url is None) == (self.urls is None):
            raise ValueError("give either url (one fetch) or urls (a batch), not both or neither")
        return self

    def submission(self) -> JobSubmission:
        """The job's kind (``fetch`` or ``fetch_batch``), parameters and webhook."""
        if self.urls is None:
            single = FetchParams(url=self.url or "", store_body=self.store_body)
            return JobSubmission(JobKind.FETCH, single.model_dump(), self.callback_url)
        batch = FetchBatchParams(urls=self.urls, store_body=self.store_body)
        return JobSubmission(JobKind.FETCH_BATCH, batch.model_dump(), self.callback_url)


class EmailRequest(EmailParams):
    callback_url: str | None = Field(
        default=None, description="POSTed the finished job (signed, see the README)."
    )

    @field_validator("callback_url")
    @classmethod
    def _valid_callback(cls, url: str | None) -> str | None:
        return check_callback_url(url)

    def submission(self) -> JobSubmission:
        """The email job, or :class:`SubmissionRefused` past the recipient and size limits."""
        check_email_limits(self)
        params = self.model_dump(exclude={"callback_url"})
        return JobSubmission(JobKind.EMAIL, params, self.callback_url)


def check_email_limits(email: EmailParams) -> None:
    """Refuse an email past the configured recipient (422) and body (413) limits."""
    settings = get_settings()
    recipients = email.recipient_count()
    if recipients > settings.mail_max_recipients:
        raise SubmissionRefused(
            422,
            "too_many_recipients",
            f"An email may have at most {settings.mail_max_recipients} recipients "
            f"(to + cc + bcc); this one has {recipients}.",
        )
    size = email.body_bytes()
    if size > settings.mail_max_body_bytes:
        raise SubmissionRefused(
            413,
            "email_too_large",
            f"The email body is {size} bytes; at most {settings.mail_max_body_bytes} "
            "are accepted (text and html together).",
        )


#: The request model of each job kind a stored body (``{"kind": ..., ...}``) may name.
REQUEST_MODELS: dict[str, type[FetchRequest | EmailRequest]] = {
    "fetch": FetchRequest,
    "email": EmailRequest,
}

#: Kinds a body may name that this installation cannot run yet, and what to tell the client.
#: A kind moves to ``REQUEST_MODELS`` once it has a request model and a worker.
UNAVAILABLE_KINDS: dict[str, str] = {
    "transcode": "transcode schedules need the transcode job kind, which this installation "
    "does not offer yet",
}


def parse_job(body: dict[str, Any]) -> JobSubmission:
    """``{"kind": ..., <that kind's request body>}`` validated into a submission.

    Raises :class:`InvalidJob` for a body its kind's request model refuses (or no such
    kind), and :class:`SubmissionRefused` for a kind this installation does not offer
    or a job past its limits (an email with too many recipients), exactly as the API
    answers the same body sent to that kind's endpoint.
    """
    if not isinstance(body, dict):
        raise InvalidJob([("job", "must be an object with a kind, e.g. {'kind': 'fetch', ...}")])
    rest = dict(body)
    kind = rest.pop("kind", None)
    if kind in UNAVAILABLE_KINDS:
        raise SubmissionRefused(422, "job_kind_unavailable", UNAVAILABLE_KINDS[kind] + ".")
    model = REQUEST_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        known = ", ".join(sorted(REQUEST_MODELS))
        given = "missing" if kind is None else f"{kind!r} is not one"
        raise InvalidJob([("kind", f"{given}; the job's kind must be one of: {known}")])
    try:
        request = model.model_validate(rest)
    except ValidationError as exc:
        raise InvalidJob(
            [
                (".".join(str(part) for part in error["loc"]) or "job", error["msg"])
                for error in exc.errors()
            ]
        ) from None
    return request.submission()
