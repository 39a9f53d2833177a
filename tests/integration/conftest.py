"""Fixtures that run Sous for real: a private database, vhost and Redis DB, real processes."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sous_core.db.engine import dispose_engine
from sous_core.db.migrate import upgrade
from sous_core.settings import get_settings
from support.sinks import SmtpSink, WebhookReceiver
from support.stack import Api, Origin, Stack, make_stack, private_database


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    yield sink
    sink.close()


@pytest.fixture(scope="session")
def stack(session_tmp: Path, smtp_sink: SmtpSink) -> Iterator[Stack]:
    """A shared installation with an API and a fast worker, for tests that can share one."""
    with make_stack(
        session_tmp,
        SOUS_SMTP_PORT=str(smtp_sink.port),
        SOUS_WEBHOOK_BACKOFF="0.2",
        SOUS_WEBHOOK_MAX_ATTEMPTS="3",
    ) as shared:
        shared.start_fast_worker()
        yield shared


@pytest.fixture(scope="session")
def api(stack: Stack) -> Api:
    return stack.start_api()


@pytest.fixture(scope="session")
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.close()


@pytest.fixture
def tenant_key(stack: Stack) -> str:
    return stack.create_key(f"tenant-{secrets.token_hex(3)}")


@pytest.fixture
def client(api: Api, tenant_key: str) -> Iterator[httpx.Client]:
    with api.client(tenant_key) as http_client:
        yield http_client


@pytest.fixture(scope="session")
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    server.close()


@pytest.fixture
def process_database(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private, migrated PostgreSQL database that the process engine
    (``session_scope``) uses, as in a worker."""
    with private_database("sous_process") as url:
        upgrade(url)
        monkeypatch.setenv("SOUS_DATABASE_URL", url)
        get_settings.cache_clear()
        dispose_engine()
        try:
            yield url
        finally:
            dispose_engine()
            get_settings.cache_clear()
