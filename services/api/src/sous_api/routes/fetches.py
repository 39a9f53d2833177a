"""``POST /v1/fetches``: fetch one URL, or many in parallel, in the background."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sous_api.deps import CeleryDep, PrincipalDep, run_db
from sous_api.routes.jobs import job_accepted
from sous_api.schemas import JobResource
from sous_api.submission import submit_job
from sous_core.params import (
    MAX_URL_LENGTH,
    FetchBatchParams,
    FetchParams,
    check_callback_url,
    check_fetch_url,
)
from sous_core.settings import get_settings
from sous_core.tasks import JobKind

router = APIRouter(prefix="/v1/fetches", tags=["fetches"])


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

    def job(self) -> tuple[str, dict[str, Any]]:
        """The job's kind and parameters."""
        if self.urls is None:
            single = FetchParams(url=self.url or "", store_body=self.store_body)
            return JobKind.FETCH, single.model_dump()
        batch = FetchBatchParams(urls=self.urls, store_body=self.store_body)
        return JobKind.FETCH_BATCH, batch.model_dump()


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobResource)
async def submit_fetch(
    body: FetchRequest,
    request: Request,
    response: Response,
    principal: PrincipalDep,
    celery: CeleryDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JobResource:
    """Queue a fetch of ``url`` (or a batch of ``urls``); follow it at ``Location``.

    A batch is one job whose result lists every URL's outcome once all have finished;
    one failing URL does not fail the others. Its progress is the share finished.
    """
    kind, params = body.job()
    job, replayed = await run_db(
        submit_job, celery, principal, kind, params, idempotency_key, body.callback_url
    )
    return job_accepted(request, response, job, replayed)
