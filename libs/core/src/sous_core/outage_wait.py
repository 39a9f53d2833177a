"""Database writes that wait out an outage: backoff with jitter, bounded by a patience.

A worker that has done a job's work must record it, or the work is redone (or lost).
``write_through_outage`` retries such a write while PostgreSQL is unreachable:

    write_through_outage(record, what=f"job {job_id}: recording state succeeded", patience=300)

Only failures to reach the database are retried; a bad statement raises at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

logger = logging.getLogger("sous.jobs")

_T = TypeVar("_T")

#: Longest single sleep between two checks of ``stop_requested``, in seconds.
STOP_CHECK_INTERVAL = 0.5


def is_database_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database could not be reached, rather than a bad statement.

    ``OperationalError`` (refused, reset, server shutting down), a DBAPI error SQLAlchemy
    classed as a disconnect (``connection_invalidated``, which includes what the engine's
    ``handle_error`` hook marks as one), and a pool timeout: while connecting hangs, the
    pool's connections are all busy trying.
    """
    if isinstance(exc, OperationalError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


@dataclass(frozen=True)
class Backoff:
    """Exponential delays with "equal" jitter: attempt ``n`` waits between half and all of
    ``min(cap, first * 2**(n-1))`` seconds, so the workers that lost the database together
    do not all come back in the same instant, and none retries in a tight loop."""

    #: Ceiling of the first delay, in seconds.
    first: float = 0.5
    #: Largest delay, in seconds.
    cap: float = 10.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.cap, self.first * 2 ** max(0, attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


class OutageOutlasted(Exception):
    """The database stayed unreachable past the write's patience, or the worker is stopping."""

    def __init__(self, what: str, attempts: int, waited: float, *, stopping: bool) -> None:
        why = "the worker is shutting down" if stopping else "patience ran out"
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        super().__init__(f"{what}: gave up after {tries} over {waited:.0f}s ({why})")
        self.attempts = attempts
        self.waited = waited
        self.stopping = stopping


def _never() -> bool:
    return False


def write_through_outage(
    write: Callable[[], _T],
    *,
    what: str,
    patience: float,
    backoff: Backoff = Backoff(),
    stop_requested: Callable[[], bool] = _never,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] | None = None,
) -> _T:
    """Run ``write`` (one whole transaction) until it succeeds or the outage outlasts us.

    ``patience`` counts seconds from the first failure. Each failed attempt is logged as
    one warning line (``what``, attempt, next delay), no traceback. When ``stop_requested``
    turns true, one more attempt is made after the current sleep, then ``OutageOutlasted``.
    ``sleep`` defaults to ``time.sleep`` as it is when called: in a gevent worker, Celery
    has monkey-patched it into a cooperative sleep that lets the other tasks run.
    """
    sleep = sleep or time.sleep
    first_failure: float | None = None
    attempt = 0
    while True:
        attempt += 1
        try:
            return write()
        except (DBAPIError, PoolTimeout) as exc:
            if not is_database_unreachable(exc):
                raise
            now = clock()
            first_failure = now if first_failure is None else first_failure
            waited = now - first_failure
            left = patience - waited
            stopping = stop_requested()
            if left <= 0 or stopping:
                raise OutageOutlasted(what, attempt, waited, stopping=stopping) from exc
            delay = min(backoff.delay(attempt), left)
            logger.warning(
                "%s: the job database is unreachable (%s); attempt %d failed, next in %.1fs",
                what,
                _reason(exc),
                attempt,
                delay,
            )
            _sleep_unless_stopping(delay, stop_requested, sleep, clock)


def _sleep_unless_stopping(
    seconds: float,
    stop_requested: Callable[[], bool],
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> None:
    wake_at = clock() + seconds
    while (left := wake_at - clock()) > 0 and not stop_requested():
        sleep(min(left, STOP_CHECK_INTERVAL))


def _reason(exc: BaseException) -> str:
    """The driver's error, class and first line: no SQL statement and no parameters."""
    original = getattr(exc, "orig", None) or exc
    first_line = str(original).strip().splitlines()[0] if str(original).strip() else ""
    name = type(original).__name__
    return f"{name}: {first_line[:200]}" if first_line else name
