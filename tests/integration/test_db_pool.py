"""A pooled connection given back in the middle of a query is replaced, not handed out."""

from __future__ import annotations

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
