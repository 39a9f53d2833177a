"""User schedules: cron and time-zone rules, which ticks fire, and the schedule records.

A schedule's ticks are the instants its cron expression matches on the wall clock of
its time zone. The scheduler asks :func:`plan` which ticks to fire now; the API
creates and edits schedules with the helpers below, which validate every field and
keep ``next_fire_at`` right. Nothing here reads the clock: callers pass ``now``.

>>> from datetime import UTC, datetime
>>> next_tick("0 3 * * *", "Europe/Paris", datetime(2024, 7, 1, 12, 0, tzinfo=UTC))
datetime.datetime(2024, 7, 2, 1, 0, tzinfo=datetime.timezone.utc)
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any, NamedTuple, TypeVar
from zoneinfo import ZoneInfo, available_timezones

from croniter import CroniterBadDateError, croniter
from sqlalchemy import Select, and_, delete, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from sous_core.db.models import Schedule, ScheduleRun
from sous_core.job_requests import InvalidJob, parse_job
from sous_core.jobs import MAX_PAGE_SIZE, decode_cursor, encode_cursor

#: Longest cron expression, time-zone name and schedule name (the columns' widths).
MAX_CRON_LENGTH = 120
MAX_TIMEZONE_LENGTH = 64
MAX_NAME_LENGTH = 100

#: Shorthands accepted in place of five fields.
CRON_SHORTHANDS = ("@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually")

# croniter's random (``R``) and hashed (``H``) values: a time nobody wrote down.
_RANDOM_OR_HASHED = re.compile(r"[hr](\(\d+-\d+\))?(/\d+)?", re.ASCII | re.IGNORECASE)
# Any fixed instant: validation asks croniter for a next match, to refuse "30 February".
_REFERENCE = datetime(2000, 1, 1)
_HOUR_FIELD = 1


class MissedPolicy(StrEnum):
    """What happens to ticks missed by more than the grace period (no scheduler ran)."""

    #: None of them fire.
    SKIP = "skip"
    #: The latest of them fires, once.
    CATCH_UP = "catch_up"


class ScheduleNotFound(LookupError):
    pass


class InvalidSchedule(ValueError):
    """Fields that cannot be accepted; ``problems`` are (field, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {reason}" for field, reason in problems))
        self.problems = problems


def validate_cron(expr: str) -> str:
    """``expr`` with single spaces between its fields, or a ``ValueError`` saying why not.

    Five fields, ``minute hour day-of-month month day-of-week`` (``0 3 * * 1-5`` is 03:00
    on weekdays), or six with a trailing seconds field (``* * * * * */10`` is every ten
    seconds), or a shorthand such as ``@daily``. Fields take croniter's syntax: lists,
    ranges, steps, names (``mon``, ``jan``), ``L``, ``W`` and ``#``. One second is the
    finest step this syntax can express, so no schedule fires more than once a second.
    Refused: croniter's random ``R`` and hashed ``H`` values, a seventh (year) field,
    and expressions that match no date at all.
    """
    text = " ".join(expr.split())
    if not text:
        raise ValueError("the cron expression is empty; e.g. '0 3 * * *' is 03:00 every day")
    if len(text) > MAX_CRON_LENGTH:
        raise ValueError(f"the cron expression is longer than {MAX_CRON_LENGTH} characters")
    if not text.isascii() or not text.isprintable():
        raise ValueError("the cron expression may hold only printable ASCII characters")
    fields = text.split(" ")
    if text.startswith("@"):
        if text.lower() not in CRON_SHORTHANDS:
            raise ValueError(f"unknown shorthand {text!r}; use one of {', '.join(CRON_SHORTHANDS)}")
    elif len(fields) not in (5, 6):
        raise ValueError(
            "a cron expression has 5 fields (minute hour day-of-month month day-of-week) "
            f"or 6 (the same, then seconds); {text!r} has {len(fields)}"
        )
    for part in (part for field in fields for part in field.split(",")):
        if _RANDOM_OR_HASHED.fullmatch(part):
            raise ValueError(f"{part!r}: random (R) and hashed (H) values are not supported")
    try:
        croniter(text, _REFERENCE).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError(f"{text!r} matches no date (such as 30 February)") from None
    except ValueError as exc:
        # croniter reports some mistakes as a whole traceback; its last line says what.
        reason = (str(exc).strip().splitlines() or ["unreadable"])[-1]
        raise ValueError(f"{text!r} is not a valid cron expression: {reason}") from None
    return text


@lru_cache(maxsize=1)
def _zone_names() -> dict[str, str]:
    """Every IANA zone name, by its lower-case spelling (to suggest the right case)."""
    # ``localtime`` is whatever zone the host happens to be set to; refuse it.
    return {name.lower(): name for name in available_timezones() - {"localtime"}}


def validate_timezone(name: str) -> str:
    """``name`` if it is an IANA time zone (``Europe/Paris``, ``UTC``), else a ``ValueError``."""
    example = "an IANA name such as 'Europe/Paris' or 'UTC'"
    if not name:
        raise ValueError(f"the time zone is empty; give {example}")
    if len(name) > MAX_TIMEZONE_LENGTH:
        raise ValueError(f"the time zone is longer than {MAX_TIMEZONE_LENGTH} characters")
    known = _zone_names().get(name.lower())
    if known != name:
        hint = f"did you mean {known!r}?" if known else f"give {example}"
        raise ValueError(f"unknown time zone {name!r}; {hint}")
    return name


def _require_aware(what: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be an aware datetime, e.g. datetime.now(UTC)")


def _fires_every_hour(cron: str) -> bool:
    expanded, _ = croniter.expand(cron)
    return expanded[_HOUR_FIELD] == ["*"]


def _clock_change_end(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """The instant the clock jumped forward, known to lie in ``(before, after]``."""
    low, high = int(before.timestamp()), int(after.timestamp())
    offset = before.astimezone(zone).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return datetime.fromtimestamp(high, UTC)


def _instants(wall: datetime, zone: ZoneInfo, every_hour: bool) -> list[datetime]:
    """The instants (UTC, ascending) at which the wall-clock time ``wall`` fires."""
    first = wall.replace(tzinfo=zone).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) != wall:
        # Skipped when the clock jumped forward; ``second`` is before the jump, ``first`` after.
        return [] if every_hour else [_clock_change_end(second, first, zone)]
    if second != first and every_hour:
        return [first, second]
    return [first]


def next_tick(cron: str, timezone: str, after: datetime) -> datetime:
    """The first tick of ``cron`` on ``timezone``'s wall clock strictly after ``after`` (UTC).

    Clock changes follow cron's own rules. An expression that fires every hour (its hour
    field is ``*``) follows elapsed time: wall times the clock skips do not fire, and
    those it repeats fire twice. Any other expression keeps to its wall-clock times: a
    time the clock skips fires the moment the clock jumps (in Europe/Paris, ``30 2 * * *``
    fires at 03:00 CEST on the last Sunday of March), and a time it repeats fires on its
    first occurrence only (02:30 CEST, not again at 02:30 CET, in late October).
    """
    _require_aware("after", after)
    zone = ZoneInfo(timezone)
    every_hour = _fires_every_hour(cron)
    after = after.astimezone(UTC)
    wall = after.astimezone(zone).replace(tzinfo=None, fold=0)
    start = wall
    earlier = wall.replace(tzinfo=zone).astimezone(UTC)
    later = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if later > earlier:
        # Inside an hour the clock repeats: wall times already passed come round again.
        start = wall - (later - earlier)
    walls = croniter(cron, start)
    repeat: datetime | None = None
    while True:
        instants = _instants(walls.get_next(datetime), zone, every_hour)
        if instants and instants[0] > after:
            # First occurrences grow with the wall clock: no later wall time comes earlier.
            return instants[0] if repeat is None else min(instants[0], repeat)
        for instant in instants[1:]:
            if instant > after and (repeat is None or instant < repeat):
                repeat = instant


def _latest_tick_before(cron: str, timezone: str, since: datetime, before: datetime) -> datetime:
    """The latest tick in ``[since, before)``; ``since`` must itself be such a tick.

    A binary search over whole seconds (ticks are whole seconds): the latest tick is the
    earliest second after which the next tick is ``before`` or later.
    """
    low, high = int(since.timestamp()), math.ceil(before.timestamp()) - 1
    while low < high:
        middle = (low + high) // 2
        if next_tick(cron, timezone, datetime.fromtimestamp(middle, UTC)) < before:
            low = middle + 1
        else:
            high = middle
    return datetime.fromtimestamp(low, UTC)


class Plan(NamedTuple):
    """What a scheduler does with a schedule now."""

    #: Ticks to fire now, oldest first (each fires once: one run, one job).
    ticks: list[datetime]
    #: The schedule's next tick: always the first strictly after ``now``.
    next_fire_at: datetime


def plan(
    cron: str,
    timezone: str,
    missed_policy: str,
    next_fire_at: datetime,
    *,
    now: datetime,
    grace: timedelta | float,
) -> Plan:
    """Which of a schedule's ticks from ``next_fire_at`` up to ``now`` fire, and its next tick.

    A tick at most ``grace`` (a timedelta or seconds) before ``now`` fires. Older ticks
    were missed: with ``skip`` none of them fire, with ``catch_up`` the latest does.

    >>> from datetime import UTC, datetime
    >>> due = plan("0 * * * *", "UTC", "catch_up", datetime(2024, 1, 1, 0, tzinfo=UTC),
    ...            now=datetime(2024, 1, 1, 5, 0, 30, tzinfo=UTC), grace=60)
    >>> [tick.hour for tick in due.ticks], due.next_fire_at.hour
    ([4, 5], 6)
    """
    _require_aware("now", now)
    _require_aware("next_fire_at", next_fire_at)
    policy = MissedPolicy(missed_policy)
    cutoff = now - (grace if isinstance(grace, timedelta) else timedelta(seconds=grace))
    ticks: list[datetime] = []
    if next_fire_at <= now:
        first = next_tick(cron, timezone, next_fire_at - timedelta(microseconds=1))
        if policy is MissedPolicy.CATCH_UP and first < cutoff:
            ticks.append(_latest_tick_before(cron, timezone, first, cutoff))
        tick = next_tick(cron, timezone, max(first, cutoff) - timedelta(microseconds=1))
        while tick <= now:
            ticks.append(tick)
            tick = next_tick(cron, timezone, tick)
    return Plan(ticks, next_tick(cron, timezone, now))


def _check_name(name: str) -> str:
    if not isinstance(name, str):
        raise ValueError("must be a string")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"may be at most {MAX_NAME_LENGTH} characters long")
    if not name.isprintable():
        raise ValueError("must not contain control characters or line breaks")
    return name


def _check_enabled(enabled: bool) -> bool:
    if not isinstance(enabled, bool):
        raise ValueError("must be true or false")
    return enabled


def _check_missed_policy(policy: str) -> str:
    try:
        return MissedPolicy(policy).value
    except ValueError:
        choices = " or ".join(repr(member.value) for member in MissedPolicy)
        raise ValueError(f"must be {choices}") from None


def _check_job(body: dict[str, Any]) -> dict[str, Any]:
    try:
        parse_job(body)
    except InvalidJob as exc:
        raise InvalidSchedule(
            [
                (f"job.{field}" if field != "job" else field, reason)
                for field, reason in exc.problems
            ]
        ) from None
    return dict(body)


_VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "name": _check_name,
    "cron": validate_cron,
    "timezone": validate_timezone,
    "job": _check_job,
    "enabled": _check_enabled,
    "missed_policy": _check_missed_policy,
}


def _validated(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` checked and normalised; :class:`InvalidSchedule` lists every problem.

    A job the platform refuses outright (a kind it does not offer, an email past its
    limits) raises :class:`~sous_core.submissions.SubmissionRefused` instead.
    """
    values: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for field, value in fields.items():
        validator = _VALIDATORS.get(field)
        if validator is None:
            problems.append((field, "is not a schedule field"))
            continue
        try:
            values[field] = validator(value)
        except InvalidSchedule as exc:
            problems.extend(exc.problems)
        except ValueError as exc:
            problems.append((field, str(exc)))
    if problems:
        raise InvalidSchedule(problems)
    return values


def create_schedule(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    cron: str,
    job: dict[str, Any],
    now: datetime,
    name: str = "",
    timezone: str = "UTC",
    enabled: bool = True,
    missed_policy: str = MissedPolicy.SKIP,
) -> Schedule:
    """A new schedule for the tenant (flushed, not committed); its first tick is after ``now``.

    Raises :class:`InvalidSchedule`, or ``SubmissionRefused`` for a job the platform
    would refuse however it was submitted.
    """
    _require_aware("now", now)
    values = _validated(
        {
            "name": name,
            "cron": cron,
            "timezone": timezone,
            "job": job,
            "enabled": enabled,
            "missed_policy": missed_policy,
        }
    )
    schedule = Schedule(tenant_id=tenant_id, created_at=now, updated_at=now, **values)
    schedule.next_fire_at = next_tick(schedule.cron, schedule.timezone, now) if enabled else None
    session.add(schedule)
    session.flush()
    return schedule


def get_schedule(
    session: Session, tenant_id: uuid.UUID, schedule_id: uuid.UUID, *, for_update: bool = False
) -> Schedule:
    """The tenant's schedule; another tenant's is reported as not found."""
    statement = select(Schedule).where(Schedule.id == schedule_id, Schedule.tenant_id == tenant_id)
    if for_update:
        statement = statement.with_for_update()
    schedule = session.execute(statement).scalar_one_or_none()
    if schedule is None:
        raise ScheduleNotFound(str(schedule_id))
    return schedule


def update_schedule(
    session: Session,
    tenant_id: uuid.UUID,
    schedule_id: uuid.UUID,
    changes: Mapping[str, Any],
    *,
    now: datetime,
) -> Schedule:
    """Apply ``changes`` (any of name, cron, timezone, job, enabled, missed_policy).

    Enabling a schedule, or changing its cron or time zone, makes its next tick the first
    after ``now``; disabling it clears ``next_fire_at``. Flushed, not committed.
    """
    _require_aware("now", now)
    schedule = get_schedule(session, tenant_id, schedule_id, for_update=True)
    values = _validated(changes)
    was_enabled = schedule.enabled
    retimed = any(
        field in values and values[field] != getattr(schedule, field)
        for field in ("cron", "timezone")
    )
    for field, value in values.items():
        setattr(schedule, field, value)
    if not schedule.enabled:
        schedule.next_fire_at = None
    elif retimed or not was_enabled or schedule.next_fire_at is None:
        schedule.next_fire_at = next_tick(schedule.cron, schedule.timezone, now)
    if values:
        schedule.updated_at = now
    session.flush()
    return schedule


def delete_schedule(session: Session, tenant_id: uuid.UUID, schedule_id: uuid.UUID) -> None:
    """Delete the tenant's schedule and its runs; the jobs it created stay (unlinked)."""
    deleted = session.execute(
        delete(Schedule)
        .where(Schedule.id == schedule_id, Schedule.tenant_id == tenant_id)
        .returning(Schedule.id)
        .execution_options(synchronize_session=False)
    ).all()
    if not deleted:
        raise ScheduleNotFound(str(schedule_id))


@dataclass(frozen=True)
class SchedulePage:
    schedules: list[Schedule]
    next_cursor: str | None


@dataclass(frozen=True)
class RunPage:
    runs: list[ScheduleRun]
    next_cursor: str | None


Row = TypeVar("Row", Schedule, ScheduleRun)


def _page(
    session: Session,
    statement: Select[Row],
    time_column: InstrumentedAttribute[datetime],
    id_column: InstrumentedAttribute[uuid.UUID],
    limit: int,
    cursor: str | None,
) -> tuple[list[Row], str | None]:
    """Rows newest first by (time, id), ``limit`` at a time; raises ``InvalidCursor``."""
    if cursor is not None:
        at, row_id = decode_cursor(cursor)
        statement = statement.where(
            or_(time_column < at, and_(time_column == at, id_column < row_id))
        )
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    statement = statement.order_by(time_column.desc(), id_column.desc()).limit(limit + 1)
    rows = list(session.execute(statement).scalars())
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]
    return rows, encode_cursor(getattr(last, time_column.key), last.id)


def list_schedules(
    session: Session, tenant_id: uuid.UUID, *, limit: int = 50, cursor: str | None = None
) -> SchedulePage:
    """The tenant's schedules, newest first; pass ``next_cursor`` for more."""
    statement = select(Schedule).where(Schedule.tenant_id == tenant_id)
    rows, next_cursor = _page(session, statement, Schedule.created_at, Schedule.id, limit, cursor)
    return SchedulePage(rows, next_cursor)


def list_runs(
    session: Session,
    tenant_id: uuid.UUID,
    schedule_id: uuid.UUID,
    *,
    limit: int = 50,
    cursor: str | None = None,
) -> RunPage:
    """A schedule's runs, latest tick first; raises :class:`ScheduleNotFound`."""
    get_schedule(session, tenant_id, schedule_id)
    statement = select(ScheduleRun).where(ScheduleRun.schedule_id == schedule_id)
    rows, next_cursor = _page(session, statement, ScheduleRun.tick, ScheduleRun.id, limit, cursor)
    return RunPage(rows, next_cursor)
