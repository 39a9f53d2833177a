"""A maintenance tick carries its expiry in a header; the worker skips it once stale."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from sous_core.ticks import TICK_EXPIRES_HEADER, is_stale, tick_headers

TICK = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


def test_headers_name_the_tick_and_its_deadline() -> None:
    headers = tick_headers(TICK, 60)
    assert headers == {
        "sous_tick": TICK.isoformat(),
        TICK_EXPIRES_HEADER: (TICK + timedelta(seconds=60)).isoformat(),
    }
    assert TICK_EXPIRES_HEADER not in tick_headers(TICK, None)


def test_a_tick_is_stale_only_after_its_deadline() -> None:
    request = SimpleNamespace(**tick_headers(TICK, 60))
    assert not is_stale(request, TICK + timedelta(seconds=59))
    assert is_stale(request, TICK + timedelta(seconds=61))


def test_a_task_without_the_header_is_never_stale() -> None:
    assert not is_stale(SimpleNamespace(), TICK + timedelta(days=1))
    assert not is_stale(SimpleNamespace(**{TICK_EXPIRES_HEADER: "garbage"}), TICK)
