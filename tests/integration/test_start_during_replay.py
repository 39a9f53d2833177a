"""A worker that gets a replayed message before the replay has committed still runs it.

``sous dlq replay`` puts the failed job back to ``queued`` and publishes its message in
one transaction, which commits once the broker confirmed the message; a worker can take
the message first. PostgreSQL's ``UPDATE`` does not wait for a row whose committed
version fails its ``WHERE``, so ``jobs.start_job`` must lock the row before it concludes
that the job may not start: dropping the message would leave the job ``queued`` forever.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session

from sous_core import apikeys, jobs
from sous_core.db.engine import session_factory, session_scope
from sous_core.db.models import Job
from sous_core.states import JobState

pytestmark = pytest.mark.integration

#: Seconds a start is given to finish before the test calls it waiting.
SETTLE = 1.0


def failed_job() -> uuid.UUID:
    with session_scope() as session:
        tenant, _ = apikeys.get_or_create_tenant(session, "acme")
        job = Job(tenant_id=tenant.id, kind="fetch", params={"url": "https://example.com/"})
        session.add(job)
        session.flush()
        for state in (JobState.QUEUED, JobState.RUNNING, JobState.RUNNING):
            jobs.transition(session, job.id, state)
        jobs.transition(session, job.id, JobState.FAILED, error_code="worker_lost")
        return job.id


def start_during_replay(job_id: uuid.UUID, end_replay: Callable[[Session], None]) -> Any:
    """What ``start_job`` returns when it runs while a replay requeues the job, and
    ``end_replay`` (commit or roll back) ends that replay once the start is waiting."""
    outcome: list[Any] = []

    def start() -> None:
        with session_scope() as session:
            outcome.append(jobs.start_job(session, job_id, live_within=30))

    replay: Session = session_factory()()
    try:
        jobs.requeue_failed(replay, job_id)  # not committed: the confirm is awaited
        thread = threading.Thread(target=start)
        thread.start()
        thread.join(SETTLE)
        assert thread.is_alive(), f"the start did not wait for the replay: {outcome}"
        end_replay(replay)
        thread.join(30)
        assert not thread.is_alive()
    finally:
        replay.close()
    [started] = outcome
    return started


def test_a_start_waits_for_the_replay_that_requeues_the_job_then_runs_it(
    process_database: str,
) -> None:
    job_id = failed_job()

    started = start_during_replay(job_id, Session.commit)

    assert started is not None, "the replayed job was not started"
    assert started.attempts == 3  # two deaths, then the replayed run
    with session_scope() as session:
        assert jobs.get_job(session, job_id).state == JobState.RUNNING.value


def test_a_start_after_a_replay_that_rolled_back_leaves_the_job_failed(
    process_database: str,
) -> None:
    # The broker refused the message: the replay rolls back, and the job stays failed.
    job_id = failed_job()

    assert start_during_replay(job_id, Session.rollback) is None

    with session_scope() as session:
        job = jobs.get_job(session, job_id)
        assert job.state == JobState.FAILED.value
        assert job.attempts == 2
