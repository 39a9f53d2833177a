"""``jobs.requeue_failed``: the operator's one way out of ``failed`` (``sous dlq replay``)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from sous_core import apikeys, jobs
from sous_core.db.models import Job, WebhookDelivery
from sous_core.states import TRANSITIONS, IllegalTransition, JobState


def failed_job(session: Session, **values: object) -> Job:
    tenant, _ = apikeys.get_or_create_tenant(session, "acme")
    job = Job(tenant_id=tenant.id, kind="fetch", params={"url": "https://example.com/"}, **values)
    session.add(job)
    session.flush()
    for state in (JobState.QUEUED, JobState.RUNNING, JobState.RUNNING):
        jobs.transition(session, job.id, state)
    jobs.transition(
        session, job.id, JobState.FAILED, error_code="worker_lost", error_message="dead-lettered"
    )
    session.commit()
    return job


def test_a_failed_job_goes_back_to_queued_with_its_attempts(session: Session) -> None:
    job = failed_job(session, callback_url="https://hooks.example.com/")
    assert session.scalar(select(WebhookDelivery).where(WebhookDelivery.job_id == job.id))

    requeued = jobs.requeue_failed(session, job.id)
    session.commit()

    assert requeued.state == JobState.QUEUED.value
    assert requeued.attempts == 2
    assert requeued.error_code is None
    assert requeued.finished_at is None
    # The failure's webhook is dropped: the rerun's outcome gets a delivery of its own.
    assert session.scalar(select(WebhookDelivery).where(WebhookDelivery.job_id == job.id)) is None
    assert jobs.transition(session, job.id, JobState.RUNNING).attempts == 3


def test_the_move_is_not_in_the_transition_table(session: Session) -> None:
    assert JobState.QUEUED not in TRANSITIONS[JobState.FAILED]
    job = failed_job(session)
    with pytest.raises(IllegalTransition):
        jobs.transition(session, job.id, JobState.QUEUED)


def test_only_failed_jobs_outside_batches_and_not_cancelled_are_requeued(
    session: Session,
) -> None:
    running = failed_job(session)
    session.execute(Job.__table__.update().where(Job.id == running.id).values(state="running"))
    parent = failed_job(session)
    child = failed_job(session, parent_id=parent.id)
    cancel_asked = failed_job(session, cancel_requested=True)
    session.commit()

    for job, reason in (
        (running, "the job is running, not failed"),
        (child, "part of a batch"),
        (cancel_asked, "asked to cancel"),
    ):
        with pytest.raises(jobs.RequeueRefused, match=reason):
            jobs.requeue_failed(session, job.id)
    with pytest.raises(jobs.JobNotFound):
        jobs.requeue_failed(session, uuid.uuid4())
