"""``GET /metrics``: the platform's gauges, counted from the database at scrape time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sous_core import apikeys
from sous_core.db.engine import session_factory


def gauges(client: TestClient) -> dict[str, float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_keys_expiring_within_the_warning_window_are_counted(app_client: TestClient) -> None:
    now = datetime.now(UTC)
    with session_factory().begin() as session:
        tenant, _ = apikeys.get_or_create_tenant(session, "metrics")
        apikeys.create_key(session, tenant)  # never expires
        apikeys.create_key(session, tenant, expires_at=now + timedelta(days=3))  # soon
        apikeys.create_key(session, tenant, expires_at=now + timedelta(days=13))  # soon
        apikeys.create_key(session, tenant, expires_at=now + timedelta(days=30))  # later
        apikeys.create_key(session, tenant, expires_at=now - timedelta(days=1))  # expired
        revoked = apikeys.create_key(session, tenant, expires_at=now + timedelta(days=2))
        apikeys.revoke_key(session, revoked.key.prefix)

    values = gauges(app_client)

    assert values["sous_api_keys_active"] == 4
    assert values["sous_api_keys_expiring_soon"] == 2


def test_metrics_need_no_api_key_and_start_at_zero(app_client: TestClient) -> None:
    values = gauges(app_client)
    assert values["sous_api_keys_active"] == 0
    assert values["sous_api_keys_expiring_soon"] == 0
