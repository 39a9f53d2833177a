"""This process's running jobs: their heartbeats, and whether they were asked to stop.

A gevent worker runs hundreds of jobs at once; each asking the database about itself
every second would be hundreds of queries a second. Jobs register here while they
run, and one background thread per process refreshes the cancel flags of all of them
in one query a second, and writes one heartbeat for all of them every
``SOUS_HEARTBEAT_INTERVAL`` seconds (the stuck-job reaper looks for jobs whose
heartbeat stopped). ``should_stop()`` then only reads a flag.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable

from sous_core import jobs
from sous_core.db.engine import session_scope
from sous_core.db.models import utcnow
from sous_core.settings import get_settings

logger = logging.getLogger("sous.jobs")

#: Seconds between two looks at the database for cancel requests.
CHECK_INTERVAL = 1.0

#: Heartbeat intervals within which a running job's last heartbeat means it is alive.
LIVE_HEARTBEATS = 3


def live_window() -> float:
    """Seconds since its last heartbeat within which a running job counts as alive: a
    second message for it waits rather than run the work beside it."""
    return LIVE_HEARTBEATS * get_settings().heartbeat_interval


class CancelWatch:
    def __init__(
        self,
        interval: float = CHECK_INTERVAL,
        heartbeat_interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        background: bool = True,
    ) -> None:
        self.interval = interval
        self._background = background
        self._heartbeat_interval = heartbeat_interval
        self._clock = clock
        self._flags: dict[uuid.UUID, bool] = {}
        self._lock = threading.Lock()
        self._beat_at = clock()
        self._thread_pid: int | None = None

    @property
    def heartbeat_interval(self) -> float:
        if self._heartbeat_interval is None:
            self._heartbeat_interval = get_settings().heartbeat_interval
        return self._heartbeat_interval

    def watch(self, job_id: uuid.UUID) -> None:
        """Start watching a job that just started (its start wrote its first heartbeat)."""
        self._flags[job_id] = False
        if self._background:
            self._ensure_thread()

    def watching(self, job_id: uuid.UUID) -> bool:
        """Whether this process is running ``job_id`` right now."""
        return job_id in self._flags

    def forget(self, job_id: uuid.UUID) -> None:
        self._flags.pop(job_id, None)

    def cancelled(self, job_id: uuid.UUID) -> bool:
        """Whether ``job_id`` was asked to stop, as of the last refresh (about a second ago)."""
        return self._flags.get(job_id, False)

    def refresh(self) -> None:
        """Read the cancel flags of every watched job; heartbeat them all when it is time."""
        watched = [job_id for job_id, flagged in list(self._flags.items()) if not flagged]
        beat = self._clock() - self._beat_at >= self.heartbeat_interval
        if not watched:
            return
        with session_scope() as session:
            stopped = jobs.cancel_requested_among(session, watched)
            if beat:
                jobs.heartbeat(session, watched, utcnow())
        if beat:
            self._beat_at = self._clock()
        for job_id in stopped:
            if job_id in self._flags:
                self._flags[job_id] = True

    def _ensure_thread(self) -> None:
        # One thread per process; a forked pool child starts its own.
        with self._lock:
            if self._thread_pid == os.getpid():
                return
            self._thread_pid = os.getpid()
        threading.Thread(target=self._run, name="sous-job-watch", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                self.refresh()
            except Exception:
                logger.exception("refreshing running jobs' cancel flags and heartbeats failed")


#: The watch of this process.
WATCH = CancelWatch()
