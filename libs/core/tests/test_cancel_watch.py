"""The per-process job watch: one query refreshes every running job's cancel flag and heartbeat."""

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


def heartbeats(job_ids: list[uuid.UUID]) -> list:
    with session_scope() as session:
        return [jobs.get_job(session, job_id).heartbeat_at for job_id in job_ids]


def test_one_query_refreshes_all_watched_jobs(configured_db: str) -> None:
    first, second, third = running_jobs(3)
    watch = CancelWatch(heartbeat_interval=3600, clock=lambda: 0.0, background=False)
    for job_id in (first, second, third):
        watch.watch(job_id)
    with session_scope() as session:
        jobs.request_cancel(session, jobs.get_job(session, second))
        jobs.transition(session, third, JobState.CANCELLED)
    assert [watch.cancelled(j) for j in (first, second, third)] == [False, False, False]

    statements: list[str] = []
    engine = get_engine()

    def count(*args: object) -> None:
        statements.append(str(args[2]).lstrip().split()[0].upper())

    event.listen(engine, "before_cursor_execute", count)
    try:
        watch.refresh()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert [watch.cancelled(j) for j in (first, second, third)] == [False, True, True]
    assert statements.count("SELECT") == 1
    assert "UPDATE" not in statements, "no heartbeat before its interval"


def test_heartbeats_are_written_for_all_running_jobs_at_their_interval(configured_db: str) -> None:
    job_ids = running_jobs(2)
    started = heartbeats(job_ids)
    assert all(started), "starting a job writes its first heartbeat"
    now = [0.0]
    watch = CancelWatch(heartbeat_interval=10, clock=lambda: now[0], background=False)
    for job_id in job_ids:
        watch.watch(job_id)
    now[0] = 9.0
    watch.refresh()
    assert heartbeats(job_ids) == started
    now[0] = 10.0
    watch.refresh()
    assert all(after > before for after, before in zip(heartbeats(job_ids), started, strict=True))


def test_unknown_jobs_read_as_stopped_and_forgotten_ones_as_not(configured_db: str) -> None:
    watch = CancelWatch(heartbeat_interval=3600, background=False)
    gone = uuid.uuid4()
    watch.watch(gone)
    watch.refresh()
    assert watch.cancelled(gone), "a job whose row is gone must stop"
    watch.forget(gone)
    assert not watch.cancelled(gone)
