"""Migrations build exactly the schema the models describe, on PostgreSQL, both ways."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from sous_core.db.engine import make_engine
from sous_core.db.migrate import current_revision, downgrade, upgrade
from sous_core.db.models import Base
from support.stack import private_database

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url() -> Iterator[str]:
    with private_database("sous_mig") as url:
        yield url


def test_migrations_match_the_models_and_round_trip(database_url: str) -> None:
    upgrade(database_url)
    assert current_revision(database_url) == "0005"
    engine = make_engine(database_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == []

    downgrade(database_url, "base")
    assert current_revision(database_url) is None
    upgrade(database_url)
    assert current_revision(database_url) == "0005"
