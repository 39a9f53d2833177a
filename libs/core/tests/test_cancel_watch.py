"""The per-process cancel watch: one query refreshes every running job's flag."""

from __future__ import annotations

import uuid

from sqlalchemy import event

from sous_core import apikeys, jobs
from sous_core.cancel_watch import CancelWatch
from sous_core.db.engine import get_engine, session_scope
from sous_core.db.models import Job
from sous_core.states import JobState


def running_jobs(count: int) -> list[uuid.UUID]:
    with session_scope() as session:
        tenant, _ = apikeys.get_or_create_tenant(session, "acme")
        rows = [Job(tenant_id=tenant.id, kind="fetch", params={}) for _ in range(count)]
        session.add_all(rows)
        session.flush()
        for row in rows:
            jobs.transition(session, row.id, JobState.RUNNING)
        return [row.id for row in rows]


def test_one_query_refreshes_all_watched_jobs(configured_db: str) -> None:
    first, second, third = running_jobs(3)
    now = [0.0]
    watch = CancelWatch(interval=1.0, clock=lambda: now[0])
    for job_id in (first, second, third):
        watch.watch(job_id)
    with session_scope() as session:
        jobs.request_cancel(session, jobs.get_job(session, second))
        jobs.transition(session, third, JobState.CANCELLED)

    statements: list[str] = []
    engine = get_engine()

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    now[0] = 1.0  # a second later: the first job to look refreshes every flag
    event.listen(engine, "before_cursor_execute", count)
    try:
        flags = [watch.cancelled(job_id) for job_id in (first, second, third)]
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert flags == [False, True, True]
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1


def test_flags_wait_for_the_interval_and_unknown_jobs_read_as_stopped(configured_db: str) -> None:
    (job_id,) = running_jobs(1)
    now = [0.0]
    watch = CancelWatch(interval=1.0, clock=lambda: now[0])
    watch.watch(job_id)
    with session_scope() as session:
        jobs.request_cancel(session, jobs.get_job(session, job_id))
    now[0] = 0.9
    assert not watch.cancelled(job_id), "no look before the interval is up"
    now[0] = 1.0
    assert watch.cancelled(job_id)

    gone = uuid.uuid4()
    watch.watch(gone)
    now[0] = 2.0
    assert watch.cancelled(gone), "a job whose row is gone must stop"
    watch.forget(gone)
    assert not watch.cancelled(gone)
