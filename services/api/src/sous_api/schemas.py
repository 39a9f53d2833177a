"""Request and response bodies of the public HTTP API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from sous_core.db.models import Job
from sous_core.states import JobState


class JobError(BaseModel):
    code: str
    message: str


class JobResource(BaseModel):
    """A job as clients see it."""

    id: uuid.UUID
    kind: str
    state: JobState
    progress: int = Field(ge=0, le=100)
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: JobError | None
    attempts: int
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_job(cls, job: Job) -> JobResource:
        error = None
        if job.error_code is not None:
            error = JobError(code=job.error_code, message=job.error_message or "")
        return cls(
            id=job.id,
            kind=job.kind,
            state=JobState(job.state),
            progress=job.progress,
            params=job.params,
            result=job.result,
            error=error,
            attempts=job.attempts,
            cancel_requested=job.cancel_requested,
            created_at=job.created_at,
            updated_at=job.updated_at,
            queued_at=job.queued_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class JobList(BaseModel):
    items: list[JobResource]
    next_cursor: str | None = Field(
        description="Pass as ``cursor`` to get the next page; null on the last page."
    )
