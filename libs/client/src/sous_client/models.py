"""The API's resources as pydantic models: jobs, pages of jobs, schedules, presets.

Fields the server adds later are kept (``extra="allow"``) rather than refused, so an
older client keeps working against a newer API.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field


class JobState(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}


class Resource(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class JobError(Resource):
    code: str
    message: str


class WebhookStatus(Resource):
    """How the POST of the finished job to its ``callback_url`` went."""

    state: str
    attempts: int
    last_status_code: int | None = None
    last_error: str | None = None
    finished_at: datetime | None = None


class BatchProgress(Resource):
    total: int
    finished: int


class Job(Resource):
    """A job as ``GET /v1/jobs/{id}`` shows it: state, progress 0-100, result or error."""

    id: uuid.UUID
    kind: str
    state: JobState
    progress: int = 0
    params: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: JobError | None = None
    attempts: int = 0
    cancel_requested: bool = False
    created_at: datetime
    updated_at: datetime
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: When a running job expects to finish (its worker's estimate).
    eta_at: datetime | None = None
    parent_id: uuid.UUID | None = None
    schedule_id: uuid.UUID | None = None
    batch: BatchProgress | None = None
    callback_url: str | None = None
    webhook: WebhookStatus | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the job succeeded, failed or was cancelled: it will not change again."""
        return self.state.is_terminal

    @property
    def succeeded(self) -> bool:
        return self.state is JobState.SUCCEEDED

    @property
    def has_output(self) -> bool:
        """True when ``download`` has something to fetch (a transcode, a stored body)."""
        return self.succeeded and isinstance((self.result or {}).get("output"), dict)


ItemT = TypeVar("ItemT")


class Page(BaseModel, Generic[ItemT]):
    """One page of a list; pass ``next_cursor`` back for the next (None on the last)."""

    items: list[ItemT]
    next_cursor: str | None = None


class MissedPolicy(StrEnum):
    SKIP = "skip"
    CATCH_UP = "catch_up"


class Schedule(Resource):
    """A recurring job: ``job`` (``{"kind": "fetch" | "email", ...}``) at each ``cron`` tick."""

    id: uuid.UUID
    name: str
    cron: str
    timezone: str
    job: dict[str, Any]
    enabled: bool
    missed_policy: MissedPolicy
    next_fire_at: datetime | None = None
    last_fired_at: datetime | None = None
    created_at: datetime
    updated_at: datetime


class ScheduleRun(Resource):
    """One tick of a schedule: ``submitted`` with its ``job_id``, or ``rejected`` with ``error``."""

    tick: datetime
    outcome: str
    job_id: uuid.UUID | None = None
    error: str | None = None
    created_at: datetime


class Preset(Resource):
    """A transcode rendition that ``submit_transcode(preset=...)`` may name."""

    name: str
    description: str
    container: str
    video_codec: str | None = None
    audio_codec: str
    max_height: int | None = None
