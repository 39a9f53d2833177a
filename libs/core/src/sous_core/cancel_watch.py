"""Which of this process's running jobs have been asked to stop: one query a second for all.

A gevent worker runs hundreds of jobs at once; each asking the database about itself
every second would be hundreds of queries a second. Jobs register here while they
run, and whichever job looks first after the interval refreshes the flags of all of
them in one query; the others read the flags without waiting.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from sous_core import jobs
from sous_core.db.engine import session_scope

#: Seconds between two looks at the database.
CHECK_INTERVAL = 1.0


class CancelWatch:
    def __init__(
        self, interval: float = CHECK_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._flags: dict[uuid.UUID, bool] = {}
        self._refreshing = threading.Lock()
        self._checked_at = clock()

    def watch(self, job_id: uuid.UUID) -> None:
        self._flags[job_id] = False

    def forget(self, job_id: uuid.UUID) -> None:
        self._flags.pop(job_id, None)

    def cancelled(self, job_id: uuid.UUID) -> bool:
        """Whether ``job_id`` was asked to stop, as of the last look (at most ``interval`` ago)."""
        if self._clock() - self._checked_at >= self.interval and self._refreshing.acquire(
            blocking=False
        ):
            try:
                self._refresh()
            finally:
                self._refreshing.release()
        return self._flags.get(job_id, False)

    def _refresh(self) -> None:
        watched = [job_id for job_id, flagged in list(self._flags.items()) if not flagged]
        if watched:
            with session_scope() as session:
                stopped = jobs.cancel_requested_among(session, watched)
            for job_id in stopped:
                if job_id in self._flags:
                    self._flags[job_id] = True
        self._checked_at = self._clock()


#: The watch of this process (a forked pool child starts with an empty copy of its own).
WATCH = CancelWatch()
