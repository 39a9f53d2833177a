"""Batches: one parent job fanned out into child jobs, finished by its last child.

The parent's task creates the children (ids derived from the parent's id and the
child's place, so a redelivered parent never makes a second set) and publishes them.
Each child, in the same transaction that makes it terminal, adds one to the parent's
``children_finished``; the child that brings it to ``children_total`` finishes the
parent with the aggregate of every child's outcome. This is Celery's chord, kept in
PostgreSQL: exact under redelivery and retries, and visible as the parent's progress.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import case, func, insert, select, update
from sqlalchemy.orm import Session

from sous_core.db.models import Job, utcnow
from sous_core.states import JobState


def child_id(parent_id: uuid.UUID, index: int) -> uuid.UUID:
    """The id of a batch's ``index``-th child: the same every time the batch fans out."""
    return uuid.uuid5(parent_id, f"child-{index}")


def create_children(
    session: Session, parent: Job, kind: str, params: Sequence[dict[str, Any]]
) -> int:
    """Create the parent's children once (pending); returns how many exist now."""
    existing = session.execute(
        select(func.count()).select_from(Job).where(Job.parent_id == parent.id)
    ).scalar_one()
    if existing:
        return int(existing)
    now = utcnow()
    rows = [
        {
            "id": child_id(parent.id, index),
            "tenant_id": parent.tenant_id,
            "kind": kind,
            "params": child_params,
            "state": JobState.PENDING.value,
            "parent_id": parent.id,
            "batch_index": index,
            "created_at": now,
            "updated_at": now,
        }
        for index, child_params in enumerate(params)
    ]
    if rows:
        session.execute(insert(Job), rows)
    session.execute(
        update(Job)
        .where(Job.id == parent.id)
        .values(children_total=len(rows), updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return len(rows)


def children_in(session: Session, parent_id: uuid.UUID, states: set[JobState]) -> list[Job]:
    """A batch's children in one of ``states``, in batch order."""
    return list(
        session.execute(
            select(Job)
            .where(Job.parent_id == parent_id, Job.state.in_([state.value for state in states]))
            .order_by(Job.batch_index)
        ).scalars()
    )


def count_finished(session: Session, parent_id: uuid.UUID, count: int) -> bool:
    """Add ``count`` finished children to the parent; True when that was the last of them."""
    if count <= 0:
        return False
    finished = Job.children_finished + count
    row = session.execute(
        update(Job)
        .where(Job.id == parent_id)
        .values(
            children_finished=finished,
            progress=case(
                (Job.children_total > 0, finished * 100 // Job.children_total),
                else_=Job.progress,
            ),
            updated_at=utcnow(),
        )
        .returning(Job.children_finished, Job.children_total)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    return (
        row is not None
        and row.children_total is not None
        and (row.children_finished >= row.children_total)
    )


def all_finished(session: Session, parent_id: uuid.UUID) -> bool:
    row = session.execute(
        select(Job.children_finished, Job.children_total).where(Job.id == parent_id)
    ).one_or_none()
    return (
        row is not None
        and row.children_total is not None
        and (row.children_finished >= row.children_total)
    )


def aggregate(session: Session, parent_id: uuid.UUID) -> dict[str, Any]:
    """The parent's result: counts by state and every child's outcome, in batch order."""
    children = list(
        session.execute(
            select(Job).where(Job.parent_id == parent_id).order_by(Job.batch_index)
        ).scalars()
    )
    counts = {state.value: 0 for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)}
    items = []
    for child in children:
        counts[child.state] = counts.get(child.state, 0) + 1
        error = None
        if child.error_code is not None:
            error = {"code": child.error_code, "message": child.error_message or ""}
        items.append(
            {
                "index": child.batch_index,
                "job_id": str(child.id),
                "url": child.params.get("url"),
                "state": child.state,
                "result": child.result,
                "error": error,
            }
        )
    return {"total": len(children), **counts, "items": items}
