"""API tests run the real app in-process on a real SQLite database; no broker is running."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from sous_api.app import create_app
from sous_core import apikeys
from sous_core.db.engine import dispose_engine, session_factory
from sous_core.db.migrate import upgrade
from sous_core.settings import get_settings


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def app_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    url = f"sqlite:///{tmp_path / 'api.db'}"
    monkeypatch.setenv("SOUS_DATABASE_URL", url)
    monkeypatch.setenv("SOUS_BROKER_URL", f"amqp://guest:guest@127.0.0.1:{closed_port()}//")
    monkeypatch.setenv("SOUS_MAX_REQUEST_BYTES", "4096")
    get_settings.cache_clear()
    dispose_engine()
    upgrade(url)
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        yield client
    dispose_engine()
    get_settings.cache_clear()


@pytest.fixture
def api_key(app_client: TestClient) -> str:
    session: Session
    with session_factory().begin() as session:
        tenant, _ = apikeys.get_or_create_tenant(session, "unit")
        return apikeys.create_key(session, tenant).token
