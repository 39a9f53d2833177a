"""A pooled connection given back in the middle of a query is replaced, not handed out."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from sous_core.db.engine import make_engine

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def test_a_connection_returned_mid_query_is_discarded_at_the_next_checkout() -> None:
    # No reset on return: the connection goes back exactly as a killed greenlet left it.
    engine = make_engine(PG_URL, pool_size=1, pool_reset_on_return=None)
    try:
        with engine.connect() as connection:
            busy = connection.connection.dbapi_connection
            assert busy is not None
            busy.pgconn.send_query(b"SELECT pg_sleep(5)")  # sent, its result never read
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar_one() == 1
            assert connection.connection.dbapi_connection is not busy
    finally:
        engine.dispose()


def _backend_pid(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(text("SELECT pg_backend_pid()")).scalar_one()


def _terminate(pid: int) -> None:
    admin = make_engine(PG_URL, pool_size=1)
    try:
        with admin.connect() as connection:
            assert connection.execute(
                text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}
            ).scalar_one()
    finally:
        admin.dispose()


def test_an_idle_connection_that_died_is_pinged_and_replaced(monkeypatch) -> None:
    from sous_core.db import engine as engine_module

    engine = make_engine(PG_URL, pool_size=1)
    try:
        first = _backend_pid(engine)
        _terminate(first)  # as a database restart would, while the connection sat in the pool
        monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_SECONDS", 0.0)
        assert _backend_pid(engine) != first  # no error: the ping found it dead
    finally:
        engine.dispose()


def test_a_connection_used_a_moment_ago_is_not_pinged(monkeypatch) -> None:
    # The other side of the trade: no round trip for a connection in steady use. Were it
    # pinged, the dead connection would be replaced silently and no error raised here.
    from sqlalchemy.exc import OperationalError

    from sous_core.db import engine as engine_module

    monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_SECONDS", 3600.0)
    engine = make_engine(PG_URL, pool_size=1)
    try:
        first = _backend_pid(engine)
        _terminate(first)
        with pytest.raises(OperationalError) as raised:
            _backend_pid(engine)
        assert raised.value.connection_invalidated
        assert _backend_pid(engine) != first  # the pool replaced it after the error
    finally:
        engine.dispose()
