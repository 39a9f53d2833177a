"""Batch recounts on the gevent pool: one recount for the children that finished together.

A hundred children of one batch finishing within a few hundred milliseconds would ask
for a hundred recounts of the same parent; one recount made a moment after several
children committed counts them all. The worker installs this with
``jobs.defer_batch_settling(CoalescedSettler().request)``.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection

import gevent
from sqlalchemy import Connection, Engine

from sous_core import jobs


class CoalescedSettler:
    """Recounts requested by this process's children, a few at a time, in one greenlet.

    Requests arriving while recounts run get another round, so the last child's commit
    is always followed by a recount. A recount lost with the process is made by the
    maintenance sweep.
    """

    #: Seconds a first request waits for others to join it.
    DELAY = 0.02

    def __init__(self) -> None:
        self._pending: dict[uuid.UUID, Engine | Connection] = {}
        self._running = False

    def request(self, bind: Engine | Connection, parents: Collection[uuid.UUID]) -> None:
        for parent_id in parents:
            self._pending[parent_id] = bind
        if not self._running:
            self._running = True
            gevent.spawn_later(self.DELAY, self._run)

    def _run(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, {}
                for parent_id, bind in batch.items():
                    jobs.settle_batch(bind, parent_id)
        finally:
            # If this greenlet was killed, what is left goes with the next request (or
            # the maintenance sweep).
            self._running = False
