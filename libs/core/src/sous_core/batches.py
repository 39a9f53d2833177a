"""Batches: one parent job fanned out into child jobs, finished by its last child.

The parent's task creates the children (ids derived from the parent's id and the
child's place, so a redelivered parent never makes a second set) and publishes them.
Once a child's terminal state is committed, the parent's ``children_finished`` is
recounted (:func:`settle`); the recount that reaches ``children_total`` finishes the
parent with the aggregate of every child's outcome (exactly once: the parent's move
out of ``running`` is conditional). A recount lost to a crash right after the commit is
made by the child's redelivered message or by the maintenance sweep
(:func:`unsettled`). This is Celery's chord, kept in PostgreSQL: exact under
redelivery and retries, and visible as the parent's progress.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, bindparam, case, func, insert, select, update
from sqlalchemy.orm import Session, aliased

from sous_core.db.models import Job, utcnow
from sous_core.states import TERMINAL_STATES, JobState

_TERMINAL = [state.value for state in TERMINAL_STATES]


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


def settle(bind: Engine | Connection, parent_id: uuid.UUID) -> bool:
    """Recount the batch's finished children onto the parent; True when all have finished.

    Called after a child's terminal state is committed, never inside that transaction:
    one ``UPDATE`` in a transaction of its own (autocommit), so the parent's row is
    locked only while PostgreSQL runs it. (Counting inside each child's transaction held
    the lock until the worker got round to sending COMMIT: a hundred children finishing
    together in one gevent process queued for it, one greenlet switch at a time.)

    The count is read, not incremented, so settling twice is harmless and nothing is
    counted twice; a recount never lowers the number (two recounts may land out of
    order). Each child's recount runs after its own commit, so the last child's sees
    every child finished.
    """
    statement = _settle_statement(bind.dialect.name)
    engine = bind if isinstance(bind, Engine) else bind.engine
    with engine.connect() as connection:
        row = (
            connection.execution_options(isolation_level="AUTOCOMMIT")
            .execute(statement, {"batch_id": parent_id, "now": utcnow()})
            .one_or_none()
        )
    return row is not None and row.children_finished >= row.children_total


@functools.cache
def _settle_statement(dialect: str) -> Any:
    """The recount of :func:`settle`, built once per dialect (building it per child was
    a fifth of a fast worker's CPU in a fan-out)."""
    children = cast(Table, Job.__table__).alias("child")
    parents = cast(Table, Job.__table__)
    parent_id = bindparam("batch_id", type_=parents.c.id.type)
    finished_now = (
        select(func.count())
        .select_from(children)
        .where(children.c.parent_id == parent_id, children.c.state.in_(_TERMINAL))
        .scalar_subquery()
    )
    greatest = func.greatest if dialect == "postgresql" else func.max
    finished = greatest(parents.c.children_finished, finished_now)
    return (
        update(parents)
        .where(parents.c.id == parent_id, parents.c.children_total.is_not(None))
        .values(
            children_finished=finished,
            progress=case(
                (parents.c.children_total > 0, finished * 100 // parents.c.children_total),
                else_=parents.c.progress,
            ),
            updated_at=bindparam("now", type_=parents.c.updated_at.type),
        )
        .returning(parents.c.children_finished, parents.c.children_total)
    )


def unsettled(session: Session, limit: int = 100) -> list[uuid.UUID]:
    """Running batches whose children have all finished but that are not finished.

    The recount after a child's commit can be lost (the process died right after the
    commit, the database went away); a sweep settles these.
    """
    child = aliased(Job)
    unfinished_child = (
        select(child.id).where(child.parent_id == Job.id, child.state.not_in(_TERMINAL)).exists()
    )
    return list(
        session.execute(
            select(Job.id)
            .where(
                Job.state == JobState.RUNNING.value,
                Job.children_total.is_not(None),
                ~unfinished_child,
            )
            .limit(limit)
        ).scalars()
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
