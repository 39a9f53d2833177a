"""Job records on a real (SQLite) database: transitions, listing, cursors, cancel."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from sous_core import apikeys, jobs
from sous_core.db.models import Job
from sous_core.states import IllegalTransition, JobState


def make_job(session: Session, tenant_name: str = "acme", **values) -> Job:
    tenant, _ = apikeys.get_or_create_tenant(session, tenant_name)
    job = Job(tenant_id=tenant.id, kind="fetch", params={"url": "https://example.com/"}, **values)
    session.add(job)
    session.commit()
    return job


def test_transition_sets_state_timestamps_and_attempts(session: Session) -> None:
    job = make_job(session)
    assert job.state == "pending"

    queued = jobs.transition(session, job.id, JobState.QUEUED)
    running = jobs.transition(session, job.id, JobState.RUNNING)
    assert running.attempts == 1
    again = jobs.transition(session, job.id, JobState.RUNNING)
    done = jobs.transition(session, job.id, JobState.SUCCEEDED, result={"ok": True})
    session.commit()

    assert queued.queued_at is not None
    assert again.attempts == 2
    assert done.state == "succeeded"
    assert done.progress == 100
    assert done.result == {"ok": True}
    assert done.finished_at is not None
    assert done.finished_at.tzinfo is not None
    assert done.queued_at <= done.started_at <= done.finished_at


def test_a_start_never_precedes_the_queued_time_another_process_wrote(session: Session) -> None:
    # The API and a worker read their own clocks: the API's queued_at can be written a
    # hair after the worker read its "now" for the start. The start must not precede it.
    job = make_job(session)
    ahead = datetime.now(UTC) + timedelta(seconds=5)
    jobs.transition(session, job.id, JobState.QUEUED, queued_at=ahead)
    session.commit()

    running = jobs.transition(session, job.id, JobState.RUNNING)
    session.commit()

    assert running.queued_at == running.started_at
    assert running.started_at < ahead


def test_a_start_keeps_an_earlier_queued_time(session: Session) -> None:
    job = make_job(session)
    earlier = datetime.now(UTC) - timedelta(seconds=5)
    jobs.transition(session, job.id, JobState.QUEUED, queued_at=earlier)
    running = jobs.transition(session, job.id, JobState.RUNNING)
    session.commit()

    assert running.queued_at == earlier
    assert running.started_at > earlier


def test_illegal_transition_is_refused_and_changes_nothing(session: Session) -> None:
    job = make_job(session)
    jobs.transition(session, job.id, JobState.CANCELLED)
    session.commit()

    with pytest.raises(IllegalTransition, match="a cancelled job cannot become running"):
        jobs.transition(session, job.id, JobState.RUNNING)
    session.rollback()
    assert jobs.get_job(session, job.id).state == "cancelled"
    assert jobs.get_job(session, job.id).attempts == 0


def test_transition_of_a_missing_job_is_not_found(session: Session) -> None:
    with pytest.raises(jobs.JobNotFound):
        jobs.transition(session, uuid.uuid4(), JobState.QUEUED)


def test_get_job_hides_other_tenants_jobs(session: Session) -> None:
    job = make_job(session, "alice")
    bob, _ = apikeys.get_or_create_tenant(session, "bob")
    assert jobs.get_job(session, job.id, tenant_id=job.tenant_id).id == job.id
    with pytest.raises(jobs.JobNotFound):
        jobs.get_job(session, job.id, tenant_id=bob.id)


def test_list_pages_newest_first_even_with_equal_timestamps(session: Session) -> None:
    same_time = datetime(2026, 1, 1, tzinfo=UTC)
    made = [make_job(session, created_at=same_time - timedelta(seconds=n % 3)) for n in range(7)]
    expected = [job.id for job in sorted(made, key=lambda j: (j.created_at, j.id), reverse=True)]
    tenant_id = made[0].tenant_id

    seen = []
    cursor = None
    while True:
        page = jobs.list_jobs(session, tenant_id, limit=3, cursor=cursor)
        seen += [job.id for job in page.jobs]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == expected


def test_list_filters_by_kind_and_state(session: Session) -> None:
    job = make_job(session)
    other = make_job(session)
    jobs.transition(session, other.id, JobState.FAILED)
    session.commit()
    page = jobs.list_jobs(session, job.tenant_id, state=JobState.FAILED)
    assert [j.id for j in page.jobs] == [other.id]
    assert jobs.list_jobs(session, job.tenant_id, kind="email").jobs == []


@pytest.mark.parametrize("cursor", ["", "!!!", "bm90IGEgY3Vyc29y", "MjAyNnxub3QtYS11dWlk"])
def test_bad_cursors_are_refused(session: Session, cursor: str) -> None:
    job = make_job(session)
    with pytest.raises(jobs.InvalidCursor):
        jobs.list_jobs(session, job.tenant_id, cursor=cursor)


def test_cursor_round_trips() -> None:
    stamp = datetime(2026, 5, 1, 12, 30, 1, 123456, tzinfo=UTC)
    job_id = uuid.uuid4()
    assert jobs.decode_cursor(jobs.encode_cursor(stamp, job_id)) == (stamp, job_id)


def test_cancel_queued_job_is_immediate_running_job_is_flagged(session: Session) -> None:
    queued = make_job(session, state="queued")
    running = make_job(session, state="running")

    assert jobs.request_cancel(session, queued).state == "cancelled"
    flagged = jobs.request_cancel(session, running)
    session.commit()

    assert flagged.state == "running"
    assert flagged.cancel_requested is True
    assert jobs.is_cancel_requested(session, running.id)
    assert jobs.is_cancel_requested(session, queued.id)


def test_progress_is_recorded_only_while_running(session: Session) -> None:
    job = make_job(session, state="running")
    jobs.set_progress(session, job.id, 40)
    session.commit()
    assert jobs.get_job(session, job.id).progress == 40
    jobs.transition(session, job.id, JobState.FAILED)
    jobs.set_progress(session, job.id, 90)
    session.commit()
    assert jobs.get_job(session, job.id).progress == 40


def test_only_from_narrows_the_legal_sources(session: Session) -> None:
    # The API marks a job queued after publishing; a worker may already run it.
    job = make_job(session, state="running")
    with pytest.raises(IllegalTransition):
        jobs.transition(session, job.id, JobState.QUEUED, only_from={JobState.PENDING})
    session.rollback()
    assert jobs.get_job(session, job.id).state == "running"
    pending = make_job(session)
    assert (
        jobs.transition(session, pending.id, JobState.QUEUED, only_from={JobState.PENDING}).state
        == "queued"
    )


def test_a_running_job_starts_again_only_once_its_heartbeat_has_stopped(
    session: Session,
) -> None:
    # A second message for a running job (a redelivery after a broker restart) must not
    # run the work beside the attempt that is still alive and heartbeating.
    job = make_job(session)
    jobs.transition(session, job.id, JobState.QUEUED)
    first = jobs.start_job(session, job.id, live_within=30)
    session.commit()
    assert first is not None
    assert first.attempts == 1

    assert jobs.start_job(session, job.id, live_within=30) is None
    session.commit()
    refreshed = jobs.get_job(session, job.id)
    assert refreshed.state == "running"
    assert refreshed.attempts == 1
    assert jobs.is_live(refreshed, 30)

    silent_since = datetime.now(UTC) - timedelta(seconds=31)
    jobs.heartbeat(session, [job.id], silent_since)
    session.commit()
    assert not jobs.is_live(jobs.get_job(session, job.id), 30)
    second = jobs.start_job(session, job.id, live_within=30)
    session.commit()
    assert second is not None
    assert second.attempts == 2
