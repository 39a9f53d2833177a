"""``SousScheduler``: Celery beat's scheduler, with every fire claimed in PostgreSQL.

Beat that runs twice (two replicas during a rollout, ``worker -B`` on an autoscaled
pool) is a classic incident. Here each maintenance tick is claimed by inserting
(name, tick) and each user-schedule tick by inserting (schedule, tick), in the
transaction that publishes or submits it; a second scheduler finds the claim and does
nothing. Ticks are named by their scheduled time, so every scheduler agrees on them.

A maintenance tick missed while no scheduler ran fires once at start (the latest one).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import datetime
from typing import Any

from celery import beat

from sous_core import metrics
from sous_core.db.engine import session_scope
from sous_core.db.models import utcnow
from sous_core.settings import get_settings
from sous_core.ticks import claim_tick, last_claimed, tick_headers
from sous_scheduler import firing
from sous_scheduler.schedule import MaintenanceEntry, maintenance_schedule

logger = logging.getLogger("sous.scheduler")

#: Seconds to wait before trying again when the database or broker failed.
RETRY_SECONDS = 5.0


def _count_fired(source: str, count: int = 1) -> None:
    metrics.SCHEDULER_TICKS_FIRED.labels(source=source).inc(count)
    metrics.SCHEDULER_LAST_FIRE.set(time.time())


class SousScheduler(beat.Scheduler):
    """Runs inside ``celery beat``; beat calls :meth:`tick` and sleeps what it returns."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.settings = get_settings()
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.maintenance = maintenance_schedule(self.settings)
        self.due: dict[str, datetime] = {}
        self.next_schedule_poll = 0.0
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        """Nothing to load: the schedule is code and settings, the ticks are in the database."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        now = utcnow()
        metrics.SCHEDULER_LAST_LOOP.set(time.time())
        waits = [self.settings.schedule_poll_interval]
        for entry in self.maintenance:
            try:
                waits.append(self._maintenance_tick(entry, now))
            except Exception:
                logger.exception("maintenance entry %s failed; retrying shortly", entry.name)
                waits.append(RETRY_SECONDS)
        if time.monotonic() >= self.next_schedule_poll:
            try:
                report = firing.fire_due_schedules(self.app, now, self.settings)
                if report.submitted:
                    _count_fired("schedule", len(report.submitted))
            except Exception:
                logger.exception("firing user schedules failed; retrying shortly")
            self.next_schedule_poll = time.monotonic() + self.settings.schedule_poll_interval
        return max(0.05, min(waits))

    def _maintenance_tick(self, entry: MaintenanceEntry, now: datetime) -> float:
        """Fire ``entry`` if its tick is due; the seconds until its next tick."""
        if entry.name not in self.due:
            with session_scope() as session:
                last = last_claimed(session, entry.name)
            # The tick after the last one fired (by anyone): a tick missed while no
            # scheduler ran is due at once, exactly once.
            self.due[entry.name] = entry.next_tick(last or now)
        tick = self.due[entry.name]
        if tick <= now:
            self._fire(entry, tick)
            self.due[entry.name] = entry.next_tick(max(now, tick))
        return (self.due[entry.name] - now).total_seconds()

    def _fire(self, entry: MaintenanceEntry, tick: datetime) -> None:
        with session_scope() as session:
            if not claim_tick(session, entry.name, tick, self.identity):
                logger.info("%s tick %s was fired by another scheduler", entry.name, tick)
                return
            # Published before the claim commits: if the broker refuses, the claim
            # rolls back and the tick is tried again.
            # Expiry travels in a header, not as a message TTL: see sous_core.ticks.
            self.app.send_task(
                entry.task, ignore_result=True, headers=tick_headers(tick, entry.expires)
            )
        _count_fired("maintenance")
        logger.info("fired %s for tick %s", entry.name, tick.isoformat())

    @property
    def schedule(self) -> dict[str, Any]:
        return {}

    @property
    def info(self) -> str:
        names = ", ".join(entry.name for entry in self.maintenance)
        poll = self.settings.schedule_poll_interval
        return f"    . maintenance: {names}; user schedules checked every {poll:g}s"
