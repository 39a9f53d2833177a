"""``/v1/schedules``: a tenant's recurring jobs (cron in a time zone) and their runs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.orm import Session

from sous_api.deps import PrincipalDep, run_db
from sous_api.errors import AUTHENTICATED_ROUTE_ERRORS, ApiError, error_responses
from sous_api.submission import refusal_error
from sous_core import schedules
from sous_core.apikeys import Principal
from sous_core.db.models import utcnow
from sous_core.jobs import MAX_PAGE_SIZE, InvalidCursor
from sous_core.schedules import MissedPolicy
from sous_core.settings import get_settings
from sous_core.submissions import SubmissionRefused

router = APIRouter(prefix="/v1/schedules", tags=["schedules"], responses=AUTHENTICATED_ROUTE_ERRORS)

CRON_DESCRIPTION = (
    "When to fire, on the wall clock of ``timezone``: five fields "
    "(``minute hour day-of-month month day-of-week``), or six with seconds last, "
    "or ``@hourly``, ``@daily``, ``@weekly``, ``@monthly``, ``@yearly``."
)
JOB_DESCRIPTION = (
    'The job to submit at each tick: ``{"kind": "fetch" | "email", ...}`` followed by '
    "the body ``POST /v1/fetches`` or ``POST /v1/emails`` takes; checked the same way."
)
MISSED_POLICY_DESCRIPTION = (
    "Ticks missed by more than the scheduler's grace period: ``skip`` them, or "
    "``catch_up`` with one run for the latest."
)


class ScheduleCreate(BaseModel):
    """A recurring job: ``job`` is submitted at every tick of ``cron`` in ``timezone``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "nightly feed",
                    "cron": "0 3 * * *",
                    "timezone": "Europe/Paris",
                    "job": {"kind": "fetch", "url": "https://example.com/feed"},
                    "enabled": True,
                    "missed_policy": "skip",
                }
            ]
        },
    )

    name: str = Field(default="", description="Your label for the schedule.")
    cron: str = Field(description=CRON_DESCRIPTION)
    timezone: str = Field(default="UTC", description="IANA time zone, e.g. ``Europe/Paris``.")
    job: dict[str, Any] = Field(description=JOB_DESCRIPTION)
    enabled: bool = Field(default=True, description="A disabled schedule does not fire.")
    missed_policy: MissedPolicy = Field(
        default=MissedPolicy.SKIP, description=MISSED_POLICY_DESCRIPTION
    )


class ScheduleUpdate(BaseModel):
    """Any subset of a schedule's fields; each is checked as on create."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"enabled": False}]})

    name: str | None = None
    cron: str | None = Field(default=None, description=CRON_DESCRIPTION)
    timezone: str | None = None
    job: dict[str, Any] | None = Field(default=None, description=JOB_DESCRIPTION)
    enabled: bool | None = None
    missed_policy: MissedPolicy | None = Field(default=None, description=MISSED_POLICY_DESCRIPTION)

    @model_validator(mode="after")
    def _no_nulls(self) -> ScheduleUpdate:
        nulls = sorted(field for field in self.model_fields_set if getattr(self, field) is None)
        if nulls:
            raise ValueError(
                "leave out the fields you do not change; null is not a value for: "
                f"{', '.join(nulls)}"
            )
        return self


class ScheduleResource(BaseModel):
    """A schedule, with when it fires next and when it last fired."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    cron: str
    timezone: str
    job: dict[str, Any]
    enabled: bool
    missed_policy: MissedPolicy
    next_fire_at: datetime | None = Field(description="The next tick (UTC); null while disabled.")
    last_fired_at: datetime | None
    created_at: datetime
    updated_at: datetime


class ScheduleList(BaseModel):
    items: list[ScheduleResource]
    next_cursor: str | None = Field(
        description="Pass as ``cursor`` to get the next page; null on the last page."
    )


class ScheduleRunResource(BaseModel):
    """One tick of a schedule: the job it submitted, or why it submitted none."""

    model_config = ConfigDict(from_attributes=True)

    tick: datetime
    outcome: str = Field(description="``submitted``, or ``rejected`` with ``error``.")
    job_id: uuid.UUID | None
    error: str | None
    created_at: datetime


class ScheduleRunList(BaseModel):
    items: list[ScheduleRunResource]
    next_cursor: str | None = Field(
        description="Pass as ``cursor`` to get the next page; null on the last page."
    )


def schedule_url(request: Request, schedule_id: uuid.UUID) -> str:
    base = get_settings().public_url.rstrip("/") or str(request.base_url).rstrip("/")
    return f"{base}/v1/schedules/{schedule_id}"


@contextmanager
def _answered_as_http() -> Iterator[None]:
    """Core refusals in the API's error shape."""
    try:
        yield
    except schedules.InvalidSchedule as exc:
        details = [{"field": field, "message": reason} for field, reason in exc.problems]
        summary = "; ".join(f"{field}: {reason}" for field, reason in exc.problems[:5])
        raise ApiError(
            422, "validation_error", f"Invalid request: {summary}", details=details
        ) from None
    except SubmissionRefused as exc:
        raise refusal_error(exc) from None
    except schedules.ScheduleNotFound as exc:
        raise ApiError(404, "schedule_not_found", f"No schedule with id {exc}.") from None
    except InvalidCursor as exc:
        raise ApiError(400, "invalid_cursor", str(exc)) from None


def _create(session: Session, principal: Principal, body: ScheduleCreate) -> ScheduleResource:
    with _answered_as_http():
        schedule = schedules.create_schedule(
            session, principal.tenant_id, now=utcnow(), **body.model_dump()
        )
    session.commit()
    return ScheduleResource.model_validate(schedule)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ScheduleResource,
    responses=error_responses(400, 413),
)
async def create_schedule(
    body: ScheduleCreate, request: Request, response: Response, principal: PrincipalDep
) -> ScheduleResource:
    """Create a schedule; it fires ``job`` at every tick of ``cron`` in ``timezone``."""
    schedule = await run_db(_create, principal, body)
    response.headers["Location"] = schedule_url(request, schedule.id)
    return schedule


def _list(session: Session, principal: Principal, limit: int, cursor: str | None) -> ScheduleList:
    with _answered_as_http():
        page = schedules.list_schedules(session, principal.tenant_id, limit=limit, cursor=cursor)
    return ScheduleList(
        items=[ScheduleResource.model_validate(schedule) for schedule in page.schedules],
        next_cursor=page.next_cursor,
    )


@router.get("", response_model=ScheduleList, responses=error_responses(400))
async def list_schedules(
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> ScheduleList:
    """The tenant's schedules, newest first; follow ``next_cursor`` for older ones."""
    return await run_db(_list, principal, limit, cursor)


def _read(session: Session, principal: Principal, schedule_id: uuid.UUID) -> ScheduleResource:
    with _answered_as_http():
        schedule = schedules.get_schedule(session, principal.tenant_id, schedule_id)
    return ScheduleResource.model_validate(schedule)


@router.get("/{schedule_id}", response_model=ScheduleResource, responses=error_responses(404))
async def get_schedule(schedule_id: uuid.UUID, principal: PrincipalDep) -> ScheduleResource:
    """A schedule, with its next and last tick."""
    return await run_db(_read, principal, schedule_id)


def _update(
    session: Session, principal: Principal, schedule_id: uuid.UUID, body: ScheduleUpdate
) -> ScheduleResource:
    with _answered_as_http():
        schedule = schedules.update_schedule(
            session,
            principal.tenant_id,
            schedule_id,
            body.model_dump(exclude_unset=True),
            now=utcnow(),
        )
    session.commit()
    return ScheduleResource.model_validate(schedule)


@router.patch(
    "/{schedule_id}", response_model=ScheduleResource, responses=error_responses(400, 404, 413)
)
async def update_schedule(
    schedule_id: uuid.UUID, body: ScheduleUpdate, principal: PrincipalDep
) -> ScheduleResource:
    """Change any of a schedule's fields.

    Enabling it, or changing its cron or time zone, makes its next tick the first from
    now; disabling it stops it (``next_fire_at`` becomes null).
    """
    return await run_db(_update, principal, schedule_id, body)


def _delete(session: Session, principal: Principal, schedule_id: uuid.UUID) -> None:
    with _answered_as_http():
        schedules.delete_schedule(session, principal.tenant_id, schedule_id)
    session.commit()


@router.delete(
    "/{schedule_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(404),
)
async def delete_schedule(schedule_id: uuid.UUID, principal: PrincipalDep) -> Response:
    """Delete a schedule and its runs; the jobs it already created stay."""
    await run_db(_delete, principal, schedule_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _runs(
    session: Session,
    principal: Principal,
    schedule_id: uuid.UUID,
    limit: int,
    cursor: str | None,
) -> ScheduleRunList:
    with _answered_as_http():
        page = schedules.list_runs(
            session, principal.tenant_id, schedule_id, limit=limit, cursor=cursor
        )
    return ScheduleRunList(
        items=[ScheduleRunResource.model_validate(run) for run in page.runs],
        next_cursor=page.next_cursor,
    )


@router.get(
    "/{schedule_id}/runs", response_model=ScheduleRunList, responses=error_responses(400, 404)
)
async def list_runs(
    schedule_id: uuid.UUID,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> ScheduleRunList:
    """The schedule's runs, latest tick first: the job each tick submitted, or why none.

    The jobs themselves: ``GET /v1/jobs?schedule_id=...``.
    """
    return await run_db(_runs, principal, schedule_id, limit, cursor)
