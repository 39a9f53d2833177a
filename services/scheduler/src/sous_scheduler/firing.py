"""Firing user schedules: each due tick becomes one job, however many schedulers run.

For each schedule whose ``next_fire_at`` has come, in one transaction: advance
``next_fire_at`` only if it still has the value this scheduler read (a second scheduler
waits on the row, then finds it changed and backs off), record the run as
(schedule, tick) — unique — and create the job through the same submission path as
the API (quotas included), with an idempotency key naming the tick. The job is
published once that transaction commits.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from sous_core import schedules, submissions
from sous_core.db.engine import session_factory, session_scope
from sous_core.db.models import Schedule, ScheduleRun, utcnow
from sous_core.job_requests import InvalidJob, parse_job
from sous_core.settings import Settings

logger = logging.getLogger("sous.scheduler")

#: Schedules looked at per round.
BATCH = 100


@dataclass
class FireReport:
    submitted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


def fire_due_schedules(app: Celery, now: datetime, settings: Settings) -> FireReport:
    """Fire every tick that is due now; returns the jobs made and the runs refused."""
    report = FireReport()
    with session_scope() as session:
        due = list(
            session.execute(
                select(Schedule.id, Schedule.next_fire_at)
                .where(Schedule.enabled.is_(True), Schedule.next_fire_at <= now)
                .order_by(Schedule.next_fire_at)
                .limit(BATCH)
            ).all()
        )
    for schedule_id, seen_next in due:
        if seen_next is not None:
            _fire_schedule(app, schedule_id, seen_next, now, settings, report)
    return report


def _fire_schedule(
    app: Celery,
    schedule_id: uuid.UUID,
    seen_next: datetime,
    now: datetime,
    settings: Settings,
    report: FireReport,
) -> None:
    with session_scope() as session:
        schedule = session.get(Schedule, schedule_id)
        if schedule is None or schedule.next_fire_at != seen_next:
            return
        plan = schedules.plan(
            schedule.cron,
            schedule.timezone,
            schedule.missed_policy,
            seen_next,
            now=now,
            grace=settings.schedule_misfire_grace,
        )
        tenant_id, job_body = schedule.tenant_id, dict(schedule.job)
        claimed = session.execute(
            update(Schedule)
            .where(Schedule.id == schedule_id, Schedule.next_fire_at == seen_next)
            .values(
                next_fire_at=plan.next_fire_at,
                last_fired_at=plan.ticks[-1] if plan.ticks else Schedule.last_fired_at,
                updated_at=utcnow(),
            )
            .returning(Schedule.id)
            .execution_options(synchronize_session=False)
        ).first()
        if claimed is None:
            return  # another scheduler took these ticks
        skipped = not plan.ticks
    if skipped:
        logger.info("schedule %s: missed ticks skipped; next at %s", schedule_id, plan.next_fire_at)
    for tick in plan.ticks:
        _fire_tick(app, schedule_id, tenant_id, job_body, tick, report)


def _fire_tick(
    app: Celery,
    schedule_id: uuid.UUID,
    tenant_id: uuid.UUID,
    job_body: dict,
    tick: datetime,
    report: FireReport,
) -> None:
    key = f"schedule:{schedule_id}:{tick.isoformat()}"
    # A plain session: submit_job commits the job (and this run with it) itself.
    with session_factory()() as session:
        try:
            submission = parse_job(job_body)
            run = ScheduleRun(schedule_id=schedule_id, tick=tick, outcome="submitted")
            session.add(run)
            # The run row commits with the job (submit_job commits): both or neither.
            job, replayed = submissions.submit_job(
                session,
                app,
                tenant_id,
                submission.kind,
                submission.params,
                idempotency_key=key,
                callback_url=submission.callback_url,
                schedule_id=schedule_id,
            )
        except (InvalidJob, submissions.SubmissionRefused) as exc:
            session.rollback()
            _record_rejection(session, schedule_id, tick, exc)
            session.commit()
            report.rejected.append(f"{schedule_id}@{tick.isoformat()}")
            return
        if replayed:
            return  # this tick's job exists already
        session.execute(
            update(ScheduleRun)
            .where(ScheduleRun.schedule_id == schedule_id, ScheduleRun.tick == tick)
            .values(job_id=job.id)
            .execution_options(synchronize_session=False)
        )
        session.commit()
    report.submitted.append(str(job.id))
    logger.info("schedule %s fired for %s: job %s", schedule_id, tick.isoformat(), job.id)


def _record_rejection(
    session: Session, schedule_id: uuid.UUID, tick: datetime, exc: Exception
) -> None:
    message = exc.message if isinstance(exc, submissions.SubmissionRefused) else str(exc)
    code = exc.code if isinstance(exc, submissions.SubmissionRefused) else "invalid_job"
    existing = session.execute(
        select(ScheduleRun.id).where(
            ScheduleRun.schedule_id == schedule_id, ScheduleRun.tick == tick
        )
    ).first()
    if existing is None:
        session.add(
            ScheduleRun(
                schedule_id=schedule_id, tick=tick, outcome="rejected", error=f"{code}: {message}"
            )
        )
    logger.warning("schedule %s tick %s not submitted: %s: %s", schedule_id, tick, code, message)
