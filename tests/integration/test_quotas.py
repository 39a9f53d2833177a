"""Daily quotas through the real CLI, API and PostgreSQL, including concurrent submissions."""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session

from sous_core import apikeys, quotas
from sous_core.db.engine import make_engine
from sous_core.db.migrate import upgrade
from sous_core.submissions import SubmissionRefused
from support.stack import Api, Origin, Stack, private_database

pytestmark = pytest.mark.integration


def set_quota(stack: Stack, tenant: str, metric: str, *limit: str) -> str:
    return stack.run(
        "sous", "tenants", "set-quota", "--tenant", tenant, "--metric", metric, *limit
    ).stdout


def quotas_json(stack: Stack, tenant: str) -> dict[str, Any]:
    return json.loads(stack.run("sous", "tenants", "quotas", "--tenant", tenant, "--json").stdout)


def assert_quota_exceeded(response: httpx.Response, metric: str) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert f"Daily quota for {metric}" in error["message"]
    assert "resets at" in error["message"]
    assert 1 <= int(response.headers["Retry-After"]) <= 86400


@pytest.fixture
def fresh_tenant(stack: Stack) -> tuple[str, str]:
    name = f"quota-{secrets.token_hex(3)}"
    return name, stack.create_key(name)


def test_a_fetch_quota_set_with_the_cli_is_enforced_by_the_api(
    stack: Stack,
    api: Api,
    origin: Origin,
    fresh_tenant: tuple[str, str],
    client: httpx.Client,
) -> None:
    tenant, key = fresh_tenant
    assert set_quota(stack, tenant, "jobs:fetch", "--daily-limit", "2").strip() == (
        f"tenant {tenant}: jobs:fetch 2 per UTC day"
    )
    body = {"url": f"{origin.url}/ok"}
    with api.client(key) as limited:
        first = limited.post("/v1/fetches", json=body, headers={"Idempotency-Key": "first"})
        assert first.status_code == 202, first.text
        assert limited.post("/v1/fetches", json=body).status_code == 202

        assert_quota_exceeded(limited.post("/v1/fetches", json=body), "jobs:fetch")
        spent = limited.post("/v1/fetches", json=body).json()["error"]["message"]
        assert "(2 of 2 used today, UTC)" in spent

        replay = limited.post("/v1/fetches", json=body, headers={"Idempotency-Key": "first"})
        assert replay.status_code == 202
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.json()["id"] == first.json()["id"]
        # Refused submissions left no job behind.
        assert len(limited.get("/v1/jobs").json()["items"]) == 2

    # Another tenant has no limit, and is not counted against this one.
    assert client.post("/v1/fetches", json=body).status_code == 202

    shown = quotas_json(stack, tenant)
    assert shown["tenant"] == tenant
    assert datetime.fromisoformat(shown["resets_at"]) > datetime.now(UTC)
    assert shown["quotas"] == [
        {"metric": "jobs:fetch", "daily_limit": 2, "used": 2},
        {"metric": "jobs:email", "daily_limit": None, "used": 0},
        {"metric": "jobs:transcode", "daily_limit": None, "used": 0},
        {"metric": "transcode_input_minutes", "daily_limit": None, "used": 0},
    ]

    set_quota(stack, tenant, "jobs:fetch", "--unlimited")
    with api.client(key) as unlimited:
        assert unlimited.post("/v1/fetches", json=body).status_code == 202
    assert quotas_json(stack, tenant)["quotas"][0] == {
        "metric": "jobs:fetch",
        "daily_limit": None,
        "used": 3,
    }


def test_a_batch_larger_than_what_is_left_is_refused_whole(
    stack: Stack, api: Api, origin: Origin, fresh_tenant: tuple[str, str]
) -> None:
    tenant, key = fresh_tenant
    set_quota(stack, tenant, "jobs:fetch", "--daily-limit", "3")
    with api.client(key) as limited:
        assert limited.post("/v1/fetches", json={"url": f"{origin.url}/ok"}).status_code == 202
        three = {"urls": [f"{origin.url}/ok?{n}" for n in range(3)]}
        refused = limited.post("/v1/fetches", json=three)
        assert_quota_exceeded(refused, "jobs:fetch")
        assert "has 2 left, too few for this job's 3" in refused.json()["error"]["message"]

        two = {"urls": [f"{origin.url}/ok?{n}" for n in range(2)]}
        accepted = limited.post("/v1/fetches", json=two)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["kind"] == "fetch_batch"
    assert quotas_json(stack, tenant)["quotas"][0]["used"] == 3


def test_the_cli_names_unknown_tenants_and_metrics(stack: Stack) -> None:
    def tenants(command: str) -> subprocess.CompletedProcess[str]:
        return stack.run("sous", "tenants", *command.split(), check=False)

    no_tenant = tenants("set-quota --tenant nobody-here --metric jobs:fetch --daily-limit 1")
    assert no_tenant.returncode == 1
    assert "no tenant named 'nobody-here'" in no_tenant.stderr
    assert "no tenant named 'nobody-here'" in tenants("quotas --tenant nobody-here").stderr

    stack.create_key("quota-cli")
    bad_metric = tenants("set-quota --tenant quota-cli --metric jobs:fetches --daily-limit 1")
    assert bad_metric.returncode == 2
    assert "'jobs:fetches' is not one of" in bad_metric.stderr
    neither = tenants("set-quota --tenant quota-cli --metric jobs:fetch")
    assert neither.returncode == 2
    assert "give either --daily-limit N or --unlimited" in neither.stderr


@pytest.fixture
def database_url() -> Iterator[str]:
    with private_database("sous_quota") as url:
        upgrade(url)
        yield url


@pytest.mark.parametrize(
    ("kind", "params", "limit", "expected_successes"),
    [
        ("fetch", {"url": "https://example.com/"}, 5, 5),
        ("fetch_batch", {"urls": ["https://example.com/a", "https://example.com/b"]}, 5, 2),
    ],
    ids=["single", "batch-of-2"],
)
def test_concurrent_charges_never_overshoot_the_limit(
    database_url: str, kind: str, params: dict[str, Any], limit: int, expected_successes: int
) -> None:
    threads = 20
    engine = make_engine(database_url, pool_size=threads)
    with Session(engine) as session, session.begin():
        tenant, _ = apikeys.get_or_create_tenant(session, "racers")
        tenant_id: uuid.UUID = tenant.id
        quotas.set_quota(session, tenant_id, "jobs:fetch", limit)

    now = datetime.now(UTC)
    start = threading.Barrier(threads)
    outcomes: list[str] = []
    lock = threading.Lock()

    def submit() -> None:
        with Session(engine) as session:
            start.wait()
            try:
                quotas.charge(session, tenant_id, kind, params, now)
                # Hold the transaction open so the others pile up behind the row lock.
                time.sleep(0.05)
                session.commit()
                outcome = "accepted"
            except SubmissionRefused as refused:
                session.rollback()
                outcome = refused.code
        with lock:
            outcomes.append(outcome)

    workers = [threading.Thread(target=submit) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)

    try:
        assert outcomes.count("accepted") == expected_successes
        assert outcomes.count("quota_exceeded") == threads - expected_successes
        with Session(engine) as session:
            [status] = [
                s for s in quotas.quotas_of(session, tenant_id, now) if s.metric == "jobs:fetch"
            ]
        units = len(params.get("urls", [None]))
        assert status == quotas.QuotaStatus("jobs:fetch", limit, expected_successes * units)
    finally:
        engine.dispose()
