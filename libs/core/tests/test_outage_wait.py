"""Writes that wait out a database outage: backoff, jitter, patience, shutdown."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from sous_core.outage_wait import (
    Backoff,
    OutageOutlasted,
    is_database_unreachable,
    write_through_outage,
)


class FakeTime:
    """A clock that only moves when slept on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def refused() -> OperationalError:
    return OperationalError(
        "UPDATE jobs SET result=%(r)s", {"r": "secret"}, ConnectionRefusedError("refused")
    )


def failing(times: int, error: Callable[[], Exception] = refused) -> Callable[[], str]:
    calls = {"n": 0}

    def write() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise error()
        return "written"

    return write


def test_retries_with_growing_jittered_delays_until_the_database_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeTime()
    backoff = Backoff(first=0.5, cap=4.0)
    with caplog.at_level(logging.WARNING, logger="sous.jobs"):
        result = write_through_outage(
            failing(6),
            what="job j1: recording state succeeded",
            patience=300,
            backoff=backoff,
            clock=fake.clock,
            sleep=fake.sleep,
        )
    assert result == "written"
    # Sleeps come in slices of at most 0.5 s; regroup them per attempt from the log lines.
    assert len(caplog.records) == 6
    delays = [float(r.getMessage().rsplit("next in ", 1)[1].rstrip("s")) for r in caplog.records]
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        # Rounded to 0.1 s in the log line.
        assert ceiling / 2 - 0.05 <= delay <= ceiling + 0.05
    assert sum(fake.sleeps) == pytest.approx(sum(delays), abs=0.35)
    assert max(fake.sleeps) <= 0.5
    for number, record in enumerate(caplog.records, start=1):
        message = record.getMessage()
        assert message.startswith("job j1: recording state succeeded: the job database is ")
        assert f"attempt {number} failed," in message
        assert "ConnectionRefusedError: refused" in message
        # One line per attempt: no traceback, and not the statement or its parameters.
        assert record.exc_info is None
        assert "secret" not in message
        assert "UPDATE" not in message


def test_jitter_spreads_delays_between_half_and_all_of_the_ceiling() -> None:
    backoff = Backoff(first=1.0, cap=8.0)
    delays = [backoff.delay(3) for _ in range(500)]
    assert all(2.0 <= delay <= 4.0 for delay in delays)
    assert max(delays) - min(delays) > 1.0
    assert all(4.0 <= backoff.delay(10) <= 8.0 for _ in range(100))


def test_gives_up_once_the_patience_is_spent_without_oversleeping_it() -> None:
    fake = FakeTime()
    with pytest.raises(OutageOutlasted) as raised:
        write_through_outage(
            failing(10_000),
            what="job j2: recording failed",
            patience=30,
            backoff=Backoff(first=1.0, cap=10.0),
            clock=fake.clock,
            sleep=fake.sleep,
        )
    outlasted = raised.value
    assert not outlasted.stopping
    assert outlasted.waited == pytest.approx(30)
    assert sum(fake.sleeps) == pytest.approx(30)
    # 0.5-1, 1-2, 2-4, 4-8, then 5-10 s each: 30 s takes between 5 and 12 attempts.
    assert 5 <= outlasted.attempts <= 12
    assert isinstance(outlasted.__cause__, OperationalError)
    assert "job j2: recording failed: gave up after" in str(outlasted)


def test_no_patience_gives_up_at_the_first_failure() -> None:
    fake = FakeTime()
    with pytest.raises(OutageOutlasted) as raised:
        write_through_outage(failing(1), what="w", patience=0, clock=fake.clock, sleep=fake.sleep)
    assert raised.value.attempts == 1
    assert fake.sleeps == []


def test_a_bad_statement_is_not_waited_on() -> None:
    fake = FakeTime()

    def duplicate() -> Exception:
        return IntegrityError("INSERT", {}, ValueError("duplicate key"))

    with pytest.raises(IntegrityError):
        write_through_outage(
            failing(1, duplicate), what="w", patience=300, clock=fake.clock, sleep=fake.sleep
        )
    assert fake.sleeps == []


def test_a_stopping_worker_makes_one_more_attempt_then_gives_up() -> None:
    fake = FakeTime()
    stop_after = 3.0
    started = fake.now
    attempts = {"n": 0}

    def write() -> None:
        attempts["n"] += 1
        raise refused()

    with pytest.raises(OutageOutlasted) as raised:
        write_through_outage(
            write,
            what="w",
            patience=300,
            backoff=Backoff(first=8.0, cap=8.0),
            stop_requested=lambda: fake.now - started >= stop_after,
            clock=fake.clock,
            sleep=fake.sleep,
        )
    assert raised.value.stopping
    # The 4-8 s sleep was cut short within a slice of the stop, then one last attempt.
    assert attempts["n"] == 2
    assert stop_after <= fake.now - started <= stop_after + 0.5


@pytest.mark.parametrize(
    ("error", "unreachable"),
    [
        (refused(), True),
        (PoolTimeout("QueuePool limit of size 20 overflow 0 reached"), True),
        (DBAPIError("SELECT 1", {}, ValueError("gone"), connection_invalidated=True), True),
        (DBAPIError("SELECT 1", {}, ValueError("syntax")), False),
        (IntegrityError("INSERT", {}, ValueError("duplicate key")), False),
        (ValueError("not a database error"), False),
    ],
)
def test_what_counts_as_the_database_being_unreachable(
    error: BaseException, unreachable: bool
) -> None:
    assert is_database_unreachable(error) is unreachable
