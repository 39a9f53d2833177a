"""A job as clients see it: the API's responses and the body of every webhook."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from sous_core.db.models import Job, WebhookDelivery
from sous_core.states import JobState


class JobError(BaseModel):
    code: str
    message: str


class WebhookStatus(BaseModel):
    """How the POST of this job to its ``callback_url`` went."""

    state: str = Field(description="pending, delivered or failed.")
    attempts: int
    last_status_code: int | None
    last_error: str | None
    finished_at: datetime | None

    @classmethod
    def from_delivery(cls, delivery: WebhookDelivery) -> WebhookStatus:
        return cls(
            state=delivery.state,
            attempts=delivery.attempts,
            last_status_code=delivery.last_status_code,
            last_error=delivery.last_error,
            finished_at=delivery.finished_at,
        )


class BatchProgress(BaseModel):
    total: int
    finished: int


class JobResource(BaseModel):
    """A job: its state, progress, result or error, and timestamps."""

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
    eta_at: datetime | None = Field(
        default=None, description="When a running job expects to finish (its worker's estimate)."
    )
    parent_id: uuid.UUID | None = Field(
        default=None, description="The batch this job belongs to, if any."
    )
    schedule_id: uuid.UUID | None = Field(
        default=None, description="The schedule that created this job, if one did."
    )
    batch: BatchProgress | None = Field(
        default=None, description="For a batch: how many of its jobs have finished."
    )
    callback_url: str | None = None
    webhook: WebhookStatus | None = Field(
        default=None, description="Delivery of the webhook, once the job has finished."
    )

    @classmethod
    def from_job(cls, job: Job, webhook: WebhookDelivery | None = None) -> JobResource:
        error = None
        if job.error_code is not None:
            error = JobError(code=job.error_code, message=job.error_message or "")
        batch = None
        if job.children_total is not None:
            batch = BatchProgress(total=job.children_total, finished=job.children_finished)
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
            eta_at=job.eta_at,
            parent_id=job.parent_id,
            schedule_id=job.schedule_id,
            batch=batch,
            callback_url=job.callback_url,
            webhook=WebhookStatus.from_delivery(webhook) if webhook is not None else None,
        )
