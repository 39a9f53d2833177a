"""Maintenance ticks: the first scheduler to insert (name, tick) fires it; stale ones are skipped.

A tick's message says until when it is worth running (a header the worker checks), not a
message TTL: RabbitMQ would dead-letter an expired message into ``dead_letter``, where it
would page an operator (``SousDeadLetterQueueNotEmpty``) for a tick the next one replaces.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from sous_core.db.models import MaintenanceTick


def claim_tick(session: Session, name: str, tick: datetime, claimed_by: str) -> bool:
    """Insert the claim in the caller's transaction; False if another scheduler has it.

    A concurrent claim of the same tick waits for the first transaction, then finds the
    row and backs off, so a tick is claimed once however many schedulers run.
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = (
        insert(MaintenanceTick)
        .values(name=name, tick=tick, claimed_by=claimed_by[:200])
        .on_conflict_do_nothing()
        .returning(MaintenanceTick.name)
    )
    return session.execute(statement).first() is not None


def last_claimed(session: Session, name: str) -> datetime | None:
    """The latest tick of ``name`` any scheduler fired."""
    return session.execute(
        select(func.max(MaintenanceTick.tick)).where(MaintenanceTick.name == name)
    ).scalar_one_or_none()


#: Message headers of a maintenance tick (seen on the task's ``request``).
TICK_HEADER = "sous_tick"
TICK_EXPIRES_HEADER = "sous_tick_expires"


def tick_headers(tick: datetime, expires: float | None) -> dict[str, str]:
    """Headers naming the tick and, if it has one, the time after which it is stale."""
    headers = {TICK_HEADER: tick.isoformat()}
    if expires is not None:
        headers[TICK_EXPIRES_HEADER] = (tick + timedelta(seconds=expires)).isoformat()
    return headers


def is_stale(request: Any, now: datetime) -> bool:
    """True when the tick a maintenance task runs for has expired (the next one replaces it)."""
    deadline = getattr(request, TICK_EXPIRES_HEADER, None)
    if not isinstance(deadline, str):
        return False
    try:
        return datetime.fromisoformat(deadline) < now
    except ValueError:
        return False
