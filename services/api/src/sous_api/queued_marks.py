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

import asyncio
import uuid
from datetime import datetime

from sqlalchemy.orm import Session

from sous_api.deps import run_db
from sous_core.submissions import mark_queued

#: Jobs marked in one statement at most.
MAX_BATCH = 500

Marked = tuple[datetime, bool]


class QueuedMarker:
    """Collects job ids from concurrent requests; one writer task marks them in batches."""

    def __init__(self) -> None:
        self._waiting: list[tuple[uuid.UUID, asyncio.Future[Marked]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0

    async def mark(self, job_id: uuid.UUID) -> Marked:
        """Wait until ``job_id`` is marked; ``(when, marked)``, ``marked`` False if the job
        was no longer pending (a worker had started it)."""
        future: asyncio.Future[Marked] = asyncio.get_running_loop().create_future()
        self._waiting.append((job_id, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_batches())
        # Shielded: a client that disconnects must not cancel the write of its job.
        return await asyncio.shield(future)

    async def _write_batches(self) -> None:
        while self._waiting:
            batch = self._waiting[:MAX_BATCH]
            del self._waiting[:MAX_BATCH]
            try:
                at, marked = await run_db(_mark, [job_id for job_id, _ in batch])
            except Exception as exc:  # each request answers for its own job
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            for job_id, future in batch:
                if not future.done():
                    future.set_result((at, job_id in marked))


def _mark(session: Session, job_ids: list[uuid.UUID]) -> tuple[datetime, set[uuid.UUID]]:
    return mark_queued(session, job_ids)
