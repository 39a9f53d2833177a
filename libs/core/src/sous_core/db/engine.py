"""One SQLAlchemy engine per process (re-created after a fork) and its session factory."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg import pq
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from sous_core.settings import get_settings

_engine: Engine | None = None
_engine_pid: int | None = None
_sessionmaker: sessionmaker[Session] | None = None

#: A pooled connection idle for longer than this is pinged before it is handed out.
PING_AFTER_IDLE_SECONDS = 1.0
_RETURNED_AT = "sous_returned_at"


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
        pool_recycle=1800,
        connect_args={"connect_timeout": 5},
        **options,
    )
    event.listen(engine, "handle_error", _mid_query_connection_is_lost)
    _ping_idle_connections(engine)
    return engine


def _ping_idle_connections(engine: Engine) -> None:
    """Ping a pooled connection before handing it out, unless it was in use a moment ago.

    SQLAlchemy's ``pool_pre_ping`` pings at every checkout: a round trip to PostgreSQL
    per session, two per API submission. A connection returned less than
    :data:`PING_AFTER_IDLE_SECONDS` ago answered a query then; one that sat longer (a
    database restart in between) is pinged and, if dead, replaced before anyone uses it.
    A connection that dies in the short window is caught by the error it raises: the
    disconnect invalidates it and every older connection in the pool.
    """
    pool = engine.pool
    dialect = engine.dialect

    @event.listens_for(pool, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_RETURNED_AT] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _maybe_ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if not _is_idle(dbapi_connection):
            # Closed, or given back mid-query (a killed greenlet): useless, known locally.
            raise DisconnectionError("pooled connection is closed or busy")
        returned_at = record.info.get(_RETURNED_AT)
        if returned_at is None or time.monotonic() - returned_at < PING_AFTER_IDLE_SECONDS:
            return  # brand new, or used a moment ago
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool discards this connection and checks out (or opens) another.
            raise DisconnectionError(f"idle connection failed its ping: {exc!r}") from exc


def _is_idle(dbapi_connection: Any) -> bool:
    """Whether psycopg knows the connection open, with no query or transaction under way."""
    if dbapi_connection.closed:
        return False
    return bool(dbapi_connection.info.transaction_status == pq.TransactionStatus.IDLE)


def _mid_query_connection_is_lost(context: Any) -> None:
    """Treat a pooled connection left in the middle of a query as a lost one.

    A gevent worker's task greenlet can be killed (Celery cancels running tasks when the
    broker connection drops) while its connection runs a query, even the pool's pre-ping;
    the connection then returns to the pool busy, and psycopg refuses any further command
    on it ("connection in transaction status ACTIVE"). Marked as a disconnect, the pool
    throws it away; the checkout check (:func:`_ping_idle_connections`) keeps such a
    connection from being handed out in the first place.
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
