"""Claiming a maintenance tick: the first scheduler to insert (name, tick) fires it."""

from __future__ import annotations

from datetime import datetime

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
