"""Core unit tests run against a real SQLite database migrated with the real migrations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from sous_core.db.engine import make_engine
from sous_core.db.migrate import upgrade


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    url = f"sqlite:///{tmp_path / 'sous.db'}"
    upgrade(url)
    engine = make_engine(url)
    with Session(engine) as db_session:
        yield db_session
    engine.dispose()


@pytest.fixture
def configured_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A migrated SQLite database that the process-wide engine (``session_scope``) uses."""
    from sous_core.db.engine import dispose_engine
    from sous_core.settings import get_settings

    url = f"sqlite:///{tmp_path / 'process.db'}"
    upgrade(url)
    monkeypatch.setenv("SOUS_DATABASE_URL", url)
    get_settings.cache_clear()
    dispose_engine()
    yield url
    dispose_engine()
    get_settings.cache_clear()
