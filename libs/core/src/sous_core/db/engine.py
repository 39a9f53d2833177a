"""One SQLAlchemy engine per process (re-created after a fork) and its session factory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from sous_core.settings import get_settings

_engine: Engine | None = None
_engine_pid: int | None = None
_sessionmaker: sessionmaker[Session] | None = None


def make_engine(url: str, pool_size: int = 10, **options: Any) -> Engine:
    """An engine with the pragmas and pool settings Sous relies on."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(
        url,
        pool_size=pool_size,
        # No overflow: connections beyond the pool would be opened and closed per use.
        max_overflow=0,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"connect_timeout": 5},
        **options,
    )
    event.listen(engine, "handle_error", _mid_query_connection_is_lost)
    return engine


def _mid_query_connection_is_lost(context: Any) -> None:
    """Treat a pooled connection left in the middle of a query as a lost one.

    A gevent worker's task greenlet can be killed (Celery cancels running tasks when the
    broker connection drops) while its connection runs a query, even the pool's pre-ping;
    the connection then returns to the pool busy, and psycopg refuses any further command
    on it ("connection in transaction status ACTIVE"). Marked as a disconnect, the pool
    throws it away and the pre-ping opens a fresh one instead of failing the next job.
    """
    if "connection in transaction status ACTIVE" in str(context.original_exception):
        context.is_disconnect = True


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes; the busy timeout waits out short locks.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def get_engine() -> Engine:
    """This process's engine; a forked child gets its own instead of sharing sockets."""
    global _engine, _engine_pid, _sessionmaker
    if _engine is None or _engine_pid != os.getpid():
        settings = get_settings()
        if _engine is not None:
            _engine.dispose(close=False)
        _engine = make_engine(settings.database_url, settings.database_pool_size)
        _engine_pid = os.getpid()
        _sessionmaker = sessionmaker(_engine, expire_on_commit=False)
    return _engine


def dispose_engine() -> None:
    """Close this process's pool; the next use builds a new engine from the settings."""
    global _engine, _engine_pid, _sessionmaker
    if _engine is not None:
        _engine.dispose()
    _engine = _engine_pid = _sessionmaker = None


def session_factory() -> sessionmaker[Session]:
    get_engine()
    assert _sessionmaker is not None
    return _sessionmaker


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with session_factory().begin() as session:
        yield session
