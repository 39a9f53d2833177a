"""Request and response bodies of the public HTTP API."""

from __future__ import annotations

from pydantic import BaseModel, Field

from sous_core.resources import JobError, JobResource, WebhookStatus

__all__ = ["JobError", "JobList", "JobResource", "WebhookStatus"]


class JobList(BaseModel):
    items: list[JobResource]
    next_cursor: str | None = Field(
        description="Pass as ``cursor`` to get the next page; null on the last page."
    )
