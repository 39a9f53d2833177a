"""Marking accepted jobs ``queued`` in batches: one UPDATE and one commit for many requests.

Every submission writes its job row and waits for the broker's confirm on its own;
the last step, ``pending`` → ``queued``, is the same statement for every job, so the
API gathers the jobs confirmed while the previous batch was being written and marks
them together (group commit). Each request still answers only once its job is marked,
so a client never reads ``pending`` after a 202 that said ``queued``.

A batch that fails (the database went away) fails each of its requests the way a
single write would (503); their jobs are published and stay ``pending`` until a
worker starts them or the stale-pending sweep republishes them.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.orm import Session

from sous_api.deps import run_db
from sous_api.group_writer import GroupWriter
from sous_core.submissions import mark_queued

Marked = tuple[datetime, bool]


class QueuedMarker(GroupWriter[uuid.UUID, Marked]):
    """Marks the jobs of concurrent requests ``queued``, one statement for each batch."""

    async def mark(self, job_id: uuid.UUID) -> Marked:
        """Wait until ``job_id`` is marked; ``(when, marked)``, ``marked`` False if the job
        was no longer pending (a worker had started it)."""
        return await self.put(job_id)

    async def write(self, items: list[uuid.UUID]) -> list[Marked | Exception]:
        at, marked = await run_db(_mark, items)
        return [(at, job_id in marked) for job_id in items]


def _mark(session: Session, job_ids: list[uuid.UUID]) -> tuple[datetime, set[uuid.UUID]]:
    return mark_queued(session, job_ids)
