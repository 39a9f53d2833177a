"""Job database: SQLAlchemy models, engine and sessions, Alembic migrations."""
