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
