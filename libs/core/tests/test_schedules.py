"""Schedule rules (cron, time zones, DST, which ticks fire) and records on SQLite."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from sous_core import apikeys, jobs, schedules
from sous_core.db.models import Job, ScheduleRun
from sous_core.schedules import (
    InvalidSchedule,
    ScheduleNotFound,
    next_tick,
    plan,
    validate_cron,
    validate_timezone,
)
from sous_core.submissions import SubmissionRefused

FEED = {"kind": "fetch", "url": "https://example.com/feed"}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def ticks(cron: str, timezone: str, after: datetime, count: int) -> list[str]:
    """The next ``count`` ticks as ``MM-DD HH:MM:SS`` in UTC."""
    found = []
    for _ in range(count):
        after = next_tick(cron, timezone, after)
        found.append(after.strftime("%m-%d %H:%M:%S"))
    return found


@pytest.mark.parametrize(
    ("expr", "normalised"),
    [
        ("0 3 * * *", "0 3 * * *"),
        ("  0  3 * *   * ", "0 3 * * *"),
        ("*/15 9-17 * * mon-fri", "*/15 9-17 * * mon-fri"),
        ("0 0 L * *", "0 0 L * *"),
        ("0 0 * * 5#3", "0 0 * * 5#3"),
        ("0 0 1 jan,mar *", "0 0 1 jan,mar *"),
        ("* * * * * */10", "* * * * * */10"),
        ("* * * * * *", "* * * * * *"),
        ("@daily", "@daily"),
        ("@HOURLY", "@HOURLY"),
    ],
)
def test_valid_cron_expressions_are_accepted(expr: str, normalised: str) -> None:
    assert validate_cron(expr) == normalised


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("* * * *", "has 4"),
        ("* * * * * * 2030", "has 7"),
        ("61 * * * *", "out of range"),
        ("* * * * * 60", "out of range"),
        ("*/0 * * * *", "step '0'"),
        ("0 0 30 2 *", "matches no date"),
        ("0 0 31 4 *", "matches no date"),
        ("H * * * *", "random (R) and hashed (H)"),
        ("R 3 * * *", "random (R) and hashed (H)"),
        ("0 h(0-5) * * *", "random (R) and hashed (H)"),
        ("@reboot", "unknown shorthand"),
        ("0 3 * * \u00e9", "printable ASCII"),
        ("0 3 * * foo", "not a valid cron expression"),
        ("1," * 70 + "2 * * * *", "longer than 120"),
    ],
)
def test_invalid_cron_expressions_are_refused_with_a_reason(expr: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        validate_cron(expr)


@pytest.mark.parametrize("name", ["UTC", "Europe/Paris", "America/New_York", "Etc/GMT+5"])
def test_iana_time_zones_are_accepted(name: str) -> None:
    assert validate_timezone(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        ("europe/paris", "did you mean 'Europe/Paris'?"),
        ("Europe", "unknown time zone"),
        ("../etc/passwd", "unknown time zone"),
        ("/etc/localtime", "unknown time zone"),
        ("localtime", "unknown time zone"),
        ("Europe/Paris\x00", "unknown time zone"),
        ("A/" + "b" * 70, "longer than 64"),
    ],
)
def test_unknown_time_zones_are_refused_with_a_reason(name: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        validate_timezone(name)


def test_next_tick_is_strictly_after_and_in_the_schedule_zone() -> None:
    assert next_tick("0 3 * * *", "UTC", utc(2024, 1, 1, 2, 59)) == utc(2024, 1, 1, 3)
    assert next_tick("0 3 * * *", "UTC", utc(2024, 1, 1, 3)) == utc(2024, 1, 2, 3)
    # 03:00 in Paris is 02:00 UTC in winter (CET) and 01:00 UTC in summer (CEST).
    assert next_tick("0 3 * * *", "Europe/Paris", utc(2024, 1, 10)) == utc(2024, 1, 10, 2)
    assert next_tick("0 3 * * *", "Europe/Paris", utc(2024, 7, 10)) == utc(2024, 7, 10, 1)
    assert next_tick("0 3 * * *", "UTC", datetime(2024, 1, 1, 2, 59, 59, 999999, UTC)) == utc(
        2024, 1, 1, 3
    )


def test_next_tick_wants_an_aware_time() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_tick("0 3 * * *", "UTC", datetime(2024, 1, 1))


def test_the_seconds_field_comes_last() -> None:
    assert ticks("* * * * * */20", "UTC", utc(2024, 1, 1), 4) == [
        "01-01 00:00:20",
        "01-01 00:00:40",
        "01-01 00:01:00",
        "01-01 00:01:20",
    ]


# Europe/Paris, 2024: clocks jump 02:00 CET -> 03:00 CEST on 31 March (at 01:00 UTC) and
# fall back 03:00 CEST -> 02:00 CET on 27 October (at 01:00 UTC).


def test_a_daily_time_skipped_by_spring_forward_fires_when_the_clock_jumps() -> None:
    assert ticks("30 2 * * *", "Europe/Paris", utc(2024, 3, 29, 12), 3) == [
        "03-30 01:30:00",  # 02:30 CET
        "03-31 01:00:00",  # 02:30 does not exist: 03:00 CEST, the moment of the jump
        "04-01 00:30:00",  # 02:30 CEST
    ]


def test_an_hourly_schedule_skips_the_hour_spring_forward_removes() -> None:
    assert ticks("30 * * * *", "Europe/Paris", utc(2024, 3, 30, 23), 4) == [
        "03-30 23:30:00",  # 00:30 CET
        "03-31 00:30:00",  # 01:30 CET
        "03-31 01:30:00",  # 03:30 CEST; 02:30 never happened
        "03-31 02:30:00",
    ]


def test_a_daily_time_repeated_by_fall_back_fires_once() -> None:
    assert ticks("30 2 * * *", "Europe/Paris", utc(2024, 10, 25, 12), 3) == [
        "10-26 00:30:00",  # 02:30 CEST
        "10-27 00:30:00",  # the first 02:30 (CEST) only, not the second (CET)
        "10-28 01:30:00",  # 02:30 CET
    ]
    # Asked during the repeated hour, after the first 02:30: tomorrow's.
    assert next_tick("30 2 * * *", "Europe/Paris", utc(2024, 10, 27, 1, 15)) == utc(
        2024, 10, 28, 1, 30
    )


def test_an_hourly_schedule_fires_in_both_copies_of_the_repeated_hour() -> None:
    assert ticks("0 * * * *", "Europe/Paris", utc(2024, 10, 26, 23, 30), 3) == [
        "10-27 00:00:00",  # 02:00 CEST
        "10-27 01:00:00",  # 02:00 CET
        "10-27 02:00:00",  # 03:00 CET
    ]
    # From 02:45 CEST (00:45 UTC), the next half hour is 02:00 CET again.
    assert ticks("0,30 * * * *", "Europe/Paris", utc(2024, 10, 27, 0, 45), 3) == [
        "10-27 01:00:00",
        "10-27 01:30:00",
        "10-27 02:00:00",
    ]


def test_plan_fires_a_tick_that_is_due_now() -> None:
    due = plan("0 3 * * *", "UTC", "skip", utc(2024, 1, 1, 3), now=utc(2024, 1, 1, 3), grace=60)
    assert due.ticks == [utc(2024, 1, 1, 3)]
    assert due.next_fire_at == utc(2024, 1, 2, 3)


def test_plan_fires_a_late_tick_within_the_grace_period() -> None:
    now = utc(2024, 1, 1, 3, 1)
    due = plan("0 3 * * *", "UTC", "skip", utc(2024, 1, 1, 3), now=now, grace=60)
    assert due.ticks == [utc(2024, 1, 1, 3)]
    assert due.next_fire_at == utc(2024, 1, 2, 3)
    grace = timedelta(seconds=60)
    assert plan("0 3 * * *", "UTC", "skip", utc(2024, 1, 1, 3), now=now, grace=grace) == due


def test_plan_fires_nothing_before_the_tick() -> None:
    due = plan("0 3 * * *", "UTC", "skip", utc(2024, 1, 1, 3), now=utc(2024, 1, 1, 2), grace=60)
    assert due.ticks == []
    assert due.next_fire_at == utc(2024, 1, 1, 3)


def test_plan_skips_missed_ticks_with_skip() -> None:
    now = utc(2024, 1, 4, 12)
    due = plan("0 3 * * *", "UTC", "skip", utc(2024, 1, 1, 3), now=now, grace=60)
    assert due.ticks == []
    assert due.next_fire_at == utc(2024, 1, 5, 3)


def test_plan_catches_up_with_only_the_latest_missed_tick() -> None:
    now = utc(2024, 1, 4, 12)
    due = plan("0 3 * * *", "UTC", "catch_up", utc(2024, 1, 1, 3), now=now, grace=60)
    assert due.ticks == [utc(2024, 1, 4, 3)]
    assert due.next_fire_at == utc(2024, 1, 5, 3)


def test_plan_catch_up_and_ticks_within_grace_fire_together() -> None:
    # Hourly, down since midnight; at 05:00:30 the 05:00 tick is on time, 04:00 is missed.
    now = utc(2024, 1, 1, 5, 0, 30)
    start = utc(2024, 1, 1, 0)
    assert plan("0 * * * *", "UTC", "catch_up", start, now=now, grace=60).ticks == [
        utc(2024, 1, 1, 4),
        utc(2024, 1, 1, 5),
    ]
    assert plan("0 * * * *", "UTC", "skip", start, now=now, grace=60).ticks == [utc(2024, 1, 1, 5)]


def test_plan_with_a_seconds_field_fires_each_tick_within_grace() -> None:
    now = datetime(2024, 6, 1, 0, 0, 30, 500000, UTC)
    due = plan("* * * * * */5", "UTC", "skip", utc(2024, 6, 1, 0, 0, 5), now=now, grace=12)
    assert due.ticks == [
        utc(2024, 6, 1, 0, 0, 20),
        utc(2024, 6, 1, 0, 0, 25),
        utc(2024, 6, 1, 0, 0, 30),
    ]
    assert due.next_fire_at == utc(2024, 6, 1, 0, 0, 35)
    # Months of missed seconds: one catch-up run, found without walking every tick.
    since = utc(2024, 1, 1)
    caught = plan("* * * * * *", "UTC", "catch_up", since, now=now, grace=2)
    assert caught.ticks == [
        utc(2024, 6, 1, 0, 0, 28),
        utc(2024, 6, 1, 0, 0, 29),
        utc(2024, 6, 1, 0, 0, 30),
    ]


def test_plan_across_spring_forward_in_the_schedule_zone() -> None:
    # 02:30 Paris does not exist on 31 March; the tick is the jump itself, 01:00 UTC.
    tick = utc(2024, 3, 31, 1)
    due = plan("30 2 * * *", "Europe/Paris", "skip", tick, now=utc(2024, 3, 31, 1, 0, 10), grace=60)
    assert due.ticks == [tick]
    assert due.next_fire_at == utc(2024, 4, 1, 0, 30)


def test_plan_refuses_an_unknown_policy() -> None:
    with pytest.raises(ValueError, match="is not a valid MissedPolicy"):
        plan("0 3 * * *", "UTC", "later", utc(2024, 1, 1), now=utc(2024, 1, 2), grace=60)


def tenant_id(session: Session, name: str = "acme") -> uuid.UUID:
    tenant, _ = apikeys.get_or_create_tenant(session, name)
    session.commit()
    return tenant.id


NOW = utc(2024, 7, 1, 12)


def test_create_computes_the_first_tick_from_now(session: Session) -> None:
    schedule = schedules.create_schedule(
        session,
        tenant_id(session),
        name="nightly feed",
        cron="0 3 * * *",
        timezone="Europe/Paris",
        job=FEED,
        now=NOW,
    )
    session.commit()
    assert schedule.next_fire_at == utc(2024, 7, 2, 1)
    assert schedule.enabled is True
    assert schedule.missed_policy == "skip"
    assert schedule.last_fired_at is None
    assert schedule.created_at == schedule.updated_at == NOW
    assert schedule.job == FEED


def test_a_disabled_schedule_has_no_next_tick(session: Session) -> None:
    schedule = schedules.create_schedule(
        session, tenant_id(session), cron="0 3 * * *", job=FEED, enabled=False, now=NOW
    )
    assert schedule.next_fire_at is None


def test_create_names_every_invalid_field(session: Session) -> None:
    with pytest.raises(InvalidSchedule) as raised:
        schedules.create_schedule(
            session,
            tenant_id(session),
            cron="0 25 * * *",
            timezone="Mars/Olympus",
            job={"kind": "fetch", "url": "ftp://example.com/"},
            missed_policy="sometimes",
            now=NOW,
        )
    fields = [field for field, _ in raised.value.problems]
    assert fields == ["cron", "timezone", "job.url", "missed_policy"]
    assert "only http:// and https:// URLs can be fetched" in str(raised.value)
    assert "must be 'skip' or 'catch_up'" in str(raised.value)


@pytest.mark.parametrize(
    ("job", "problem"),
    [
        ({"url": "https://example.com/"}, ("job.kind", "missing")),
        ({"kind": "bake", "url": "https://example.com/"}, ("job.kind", "'bake' is not one")),
        ({"kind": "fetch"}, ("job", "give either url")),
        ({"kind": "email", "to": ["a@example.com"], "subject": "s"}, ("job", "text or an html")),
        (["fetch"], ("job", "must be an object")),
    ],
)
def test_an_invalid_job_body_is_refused_with_its_field(
    session: Session, job: Any, problem: tuple[str, str]
) -> None:
    with pytest.raises(InvalidSchedule) as raised:
        schedules.create_schedule(session, tenant_id(session), cron="0 3 * * *", job=job, now=NOW)
    [(field, reason)] = raised.value.problems
    assert field == problem[0]
    assert problem[1] in reason


def test_a_transcode_job_is_refused_until_the_kind_exists(session: Session) -> None:
    with pytest.raises(SubmissionRefused) as raised:
        schedules.create_schedule(
            session, tenant_id(session), cron="0 3 * * *", job={"kind": "transcode"}, now=NOW
        )
    assert raised.value.status == 422
    assert "transcode job kind, which this installation does not offer yet" in raised.value.message


def test_update_recomputes_the_next_tick_only_when_the_timing_changes(session: Session) -> None:
    tenant = tenant_id(session)
    schedule = schedules.create_schedule(session, tenant, cron="0 3 * * *", job=FEED, now=NOW)
    later = NOW + timedelta(hours=1)

    renamed = schedules.update_schedule(session, tenant, schedule.id, {"name": "x"}, now=later)
    assert renamed.next_fire_at == utc(2024, 7, 2, 3)
    assert renamed.updated_at == later

    moved = schedules.update_schedule(
        session, tenant, schedule.id, {"timezone": "America/New_York"}, now=later
    )
    assert moved.next_fire_at == utc(2024, 7, 2, 7)

    retimed = schedules.update_schedule(
        session, tenant, schedule.id, {"cron": "*/5 * * * *"}, now=later
    )
    assert retimed.next_fire_at == utc(2024, 7, 1, 13, 5)
    assert retimed.cron == "*/5 * * * *"


def test_disabling_clears_the_next_tick_and_enabling_starts_from_now(session: Session) -> None:
    tenant = tenant_id(session)
    schedule = schedules.create_schedule(session, tenant, cron="0 * * * *", job=FEED, now=NOW)
    disabled = schedules.update_schedule(session, tenant, schedule.id, {"enabled": False}, now=NOW)
    assert disabled.next_fire_at is None

    later = utc(2024, 7, 3, 8, 30)
    enabled = schedules.update_schedule(session, tenant, schedule.id, {"enabled": True}, now=later)
    assert enabled.next_fire_at == utc(2024, 7, 3, 9)
    # Enabling an enabled schedule keeps its tick (a due tick is not lost).
    again = schedules.update_schedule(
        session, tenant, schedule.id, {"enabled": True}, now=later + timedelta(hours=2)
    )
    assert again.next_fire_at == utc(2024, 7, 3, 9)


def test_update_validates_like_create_and_changes_nothing_when_refused(session: Session) -> None:
    tenant = tenant_id(session)
    schedule = schedules.create_schedule(session, tenant, cron="0 3 * * *", job=FEED, now=NOW)
    session.commit()
    with pytest.raises(InvalidSchedule, match="cron: "):
        schedules.update_schedule(
            session, tenant, schedule.id, {"name": "ok", "cron": "every day"}, now=NOW
        )
    with pytest.raises(InvalidSchedule, match="colour: is not a schedule field"):
        schedules.update_schedule(session, tenant, schedule.id, {"colour": "red"}, now=NOW)
    session.rollback()
    assert schedules.get_schedule(session, tenant, schedule.id).name == ""


def test_another_tenants_schedule_is_not_found(session: Session) -> None:
    owner, other = tenant_id(session, "owner"), tenant_id(session, "other")
    schedule = schedules.create_schedule(session, owner, cron="0 3 * * *", job=FEED, now=NOW)
    session.commit()
    with pytest.raises(ScheduleNotFound):
        schedules.get_schedule(session, other, schedule.id)
    with pytest.raises(ScheduleNotFound):
        schedules.update_schedule(session, other, schedule.id, {"enabled": False}, now=NOW)
    with pytest.raises(ScheduleNotFound):
        schedules.delete_schedule(session, other, schedule.id)
    with pytest.raises(ScheduleNotFound):
        schedules.list_runs(session, other, schedule.id)
    assert schedules.list_schedules(session, other).schedules == []
    assert schedules.get_schedule(session, owner, schedule.id).enabled


def test_list_is_newest_first_and_paginated(session: Session) -> None:
    tenant = tenant_id(session)
    made = [
        schedules.create_schedule(
            session, tenant, name=f"s{i}", cron="0 3 * * *", job=FEED, now=NOW + timedelta(i)
        )
        for i in range(5)
    ]
    session.commit()
    first = schedules.list_schedules(session, tenant, limit=2)
    assert [s.name for s in first.schedules] == ["s4", "s3"]
    second = schedules.list_schedules(session, tenant, limit=2, cursor=first.next_cursor)
    third = schedules.list_schedules(session, tenant, limit=2, cursor=second.next_cursor)
    assert [s.name for s in second.schedules + third.schedules] == ["s2", "s1", "s0"]
    assert third.next_cursor is None
    assert {s.id for s in made} == {s.id for page in (first, second, third) for s in page.schedules}
    with pytest.raises(jobs.InvalidCursor):
        schedules.list_schedules(session, tenant, cursor="nonsense")


def test_runs_are_listed_latest_tick_first_and_deleted_with_their_schedule(
    session: Session,
) -> None:
    tenant = tenant_id(session)
    schedule = schedules.create_schedule(session, tenant, cron="0 * * * *", job=FEED, now=NOW)
    assert schedules.list_runs(session, tenant, schedule.id).runs == []
    job = Job(tenant_id=tenant, kind="fetch", params={}, schedule_id=schedule.id)
    session.add(job)
    session.flush()
    for hour in range(3):
        session.add(ScheduleRun(schedule_id=schedule.id, tick=utc(2024, 7, 1, hour), job_id=job.id))
    session.add(
        ScheduleRun(
            schedule_id=schedule.id, tick=utc(2024, 7, 1, 3), outcome="rejected", error="quota"
        )
    )
    session.commit()

    first = schedules.list_runs(session, tenant, schedule.id, limit=3)
    assert [run.tick.hour for run in first.runs] == [3, 2, 1]
    assert (first.runs[0].outcome, first.runs[0].error) == ("rejected", "quota")
    rest = schedules.list_runs(session, tenant, schedule.id, limit=3, cursor=first.next_cursor)
    assert [run.tick.hour for run in rest.runs] == [0]
    assert rest.next_cursor is None
    assert [j.id for j in jobs.list_jobs(session, tenant, schedule_id=schedule.id).jobs] == [job.id]
    assert jobs.list_jobs(session, tenant, schedule_id=uuid.uuid4()).jobs == []

    schedule_id, job_id = schedule.id, job.id
    schedules.delete_schedule(session, tenant, schedule_id)
    session.commit()
    assert session.execute(select(ScheduleRun)).first() is None
    unlinked = session.get(Job, job_id)
    assert unlinked is not None
    assert unlinked.schedule_id is None
    with pytest.raises(ScheduleNotFound):
        schedules.get_schedule(session, tenant, schedule_id)
