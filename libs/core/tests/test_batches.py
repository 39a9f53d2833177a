"""Batches on a real (SQLite) database: fan-out, counting, the last child finishing the parent."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from sous_core import apikeys, batches, jobs
from sous_core.db.models import Job
from sous_core.states import IllegalTransition, JobState

URLS = ["https://a.example/", "https://b.example/", "https://c.example/"]


def running_batch(session: Session, urls: list[str] = URLS) -> Job:
    tenant, _ = apikeys.get_or_create_tenant(session, "acme")
    parent = Job(tenant_id=tenant.id, kind="fetch_batch", params={"urls": urls})
    session.add(parent)
    session.commit()
    parent = jobs.transition(session, parent.id, JobState.RUNNING)
    batches.create_children(session, parent, "fetch", [{"url": url} for url in urls])
    session.commit()
    return parent


def children(session: Session, parent: Job) -> list[Job]:
    return list(
        session.execute(
            select(Job).where(Job.parent_id == parent.id).order_by(Job.batch_index)
        ).scalars()
    )


def test_children_are_created_once_with_stable_ids(session: Session) -> None:
    parent = running_batch(session)
    first = children(session, parent)
    assert [child.params["url"] for child in first] == URLS
    assert [child.id for child in first] == [batches.child_id(parent.id, i) for i in range(3)]
    assert {child.state for child in first} == {"pending"}

    # A redelivered parent task fans out again: nothing new is created.
    assert batches.create_children(session, parent, "fetch", [{"url": "x"}]) == 3
    session.commit()
    assert len(children(session, parent)) == 3
    assert jobs.get_job(session, parent.id).children_total == 3


def test_the_last_child_to_finish_finishes_the_batch_with_every_outcome(session: Session) -> None:
    parent = running_batch(session)
    a, b, c = children(session, parent)
    jobs.transition(session, a.id, JobState.RUNNING)
    jobs.transition(session, a.id, JobState.SUCCEEDED, result={"status_code": 200})
    jobs.transition(session, b.id, JobState.RUNNING)
    jobs.transition(
        session, b.id, JobState.FAILED, error_code="http_error", error_message="GET answered 404"
    )
    session.commit()
    halfway = jobs.get_job(session, parent.id)
    assert (halfway.state, halfway.children_finished, halfway.progress) == ("running", 2, 66)

    jobs.transition(session, c.id, JobState.CANCELLED)
    session.commit()
    done = jobs.get_job(session, parent.id)
    assert done.state == "succeeded"
    assert done.progress == 100
    assert done.result is not None
    assert {k: done.result[k] for k in ("total", "succeeded", "failed", "cancelled")} == {
        "total": 3,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 1,
    }
    items = done.result["items"]
    assert [item["url"] for item in items] == URLS
    assert items[0]["result"] == {"status_code": 200}
    assert items[0]["error"] is None
    assert items[1]["error"] == {"code": "http_error", "message": "GET answered 404"}
    assert items[2]["state"] == "cancelled"


def test_a_child_finishing_twice_is_counted_once(session: Session) -> None:
    parent = running_batch(session)
    a = children(session, parent)[0]
    jobs.transition(session, a.id, JobState.RUNNING)
    jobs.transition(session, a.id, JobState.SUCCEEDED)
    with pytest.raises(IllegalTransition):
        jobs.transition(session, a.id, JobState.FAILED)
    session.commit()
    assert jobs.get_job(session, parent.id).children_finished == 1


def test_cancelling_a_batch_cancels_unstarted_children_and_waits_for_running_ones(
    session: Session,
) -> None:
    parent = running_batch(session)
    a, b, c = children(session, parent)
    jobs.transition(session, a.id, JobState.RUNNING)
    jobs.request_cancel(session, jobs.get_job(session, parent.id))
    session.commit()
    assert [jobs.get_job(session, x.id).state for x in (b, c)] == ["cancelled", "cancelled"]
    assert jobs.get_job(session, a.id).cancel_requested
    assert jobs.get_job(session, parent.id).state == "running"

    # The running child notices and stops: the batch ends cancelled, with its result.
    jobs.transition(session, a.id, JobState.CANCELLED)
    session.commit()
    done = jobs.get_job(session, parent.id)
    assert done.state == "cancelled"
    assert done.result is not None
    assert done.result["cancelled"] == 3


def test_finish_batch_is_idempotent(session: Session) -> None:
    parent = running_batch(session, URLS[:1])
    (only,) = children(session, parent)
    jobs.transition(session, only.id, JobState.FAILED)
    session.commit()
    assert jobs.get_job(session, parent.id).state == "succeeded"
    assert jobs.finish_batch(session, parent.id) is None


def test_listing_shows_batches_but_not_their_children_unless_asked(session: Session) -> None:
    parent = running_batch(session)
    page = jobs.list_jobs(session, parent.tenant_id)
    assert [job.id for job in page.jobs] == [parent.id]
    kids = jobs.list_jobs(session, parent.tenant_id, parent_id=parent.id)
    assert len(kids.jobs) == 3


def test_cancelling_a_batch_whose_children_have_not_started_cancels_it_at_once(
    session: Session,
) -> None:
    parent = running_batch(session)
    cancelled = jobs.request_cancel(session, jobs.get_job(session, parent.id))
    session.commit()
    assert cancelled.state == "cancelled"
    assert cancelled.result is not None
    assert cancelled.result["cancelled"] == 3


def test_settling_again_counts_nothing_twice(session: Session) -> None:
    parent = running_batch(session)
    a = children(session, parent)[0]
    jobs.transition(session, a.id, JobState.CANCELLED)
    session.commit()
    bind = session.get_bind()
    assert batches.settle(bind, parent.id) is False
    assert batches.settle(bind, parent.id) is False
    session.expire_all()
    assert jobs.get_job(session, parent.id).children_finished == 1
    assert jobs.get_job(session, parent.id).progress == 33


def test_a_lost_recount_is_made_by_the_sweep(session: Session) -> None:
    # As if the process died between a child's commit and its recount: the children
    # end without settling the batch, which then waits with every child finished.
    parent = running_batch(session)
    session.execute(
        update(Job).where(Job.parent_id == parent.id).values(state=JobState.SUCCEEDED.value)
    )
    session.commit()
    assert batches.unsettled(session) == [parent.id]
    assert jobs.get_job(session, parent.id).state == "running"

    assert jobs.settle_unsettled_batches(session) == [parent.id]
    session.expire_all()
    done = jobs.get_job(session, parent.id)
    assert (done.state, done.children_finished, done.progress) == ("succeeded", 3, 100)
    assert done.result is not None
    assert done.result["succeeded"] == 3
    assert batches.unsettled(session) == []


def test_a_batch_still_running_children_is_not_unsettled(session: Session) -> None:
    parent = running_batch(session)
    a, b, _ = children(session, parent)
    jobs.transition(session, a.id, JobState.CANCELLED)
    jobs.transition(session, b.id, JobState.RUNNING)
    session.commit()
    assert batches.unsettled(session) == []


def test_an_installed_settler_gets_the_recounts_instead_of_the_commit(session: Session) -> None:
    parent = running_batch(session)
    a, b, _ = children(session, parent)
    requested: list[set[uuid.UUID]] = []
    jobs.defer_batch_settling(lambda bind, parents: requested.append(set(parents)))
    try:
        for child in (a, b):
            jobs.transition(session, child.id, JobState.RUNNING)
            jobs.finish_job(session, child.id, JobState.SUCCEEDED, result={"ok": True})
            session.commit()
    finally:
        jobs.defer_batch_settling(None)
    assert requested == [{parent.id}, {parent.id}]
    session.expire_all()
    assert jobs.get_job(session, parent.id).children_finished == 0  # not recounted yet
    session.commit()
    jobs.settle_batch(session.get_bind(), parent.id)
    session.expire_all()
    assert jobs.get_job(session, parent.id).children_finished == 2
