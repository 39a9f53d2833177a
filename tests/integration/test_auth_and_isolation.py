"""Keys, tenants and idempotency, through the real API and database."""

from __future__ import annotations

import httpx
import pytest

from support.stack import Api, Origin, Stack, wait_until

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-sous-key"},
        {"Authorization": "Bearer sous_000000000000_wrongsecret"},
    ],
    ids=["missing", "basic", "empty", "malformed", "unknown"],
)
def test_requests_without_a_valid_key_are_401(api: Api, headers: dict[str, str]) -> None:
    with httpx.Client(base_url=api.url, headers=headers) as anonymous:
        for method, path in (
            ("GET", "/v1/jobs"),
            ("POST", "/v1/fetches"),
            ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000"),
        ):
            response = anonymous.request(method, path, json={"url": "https://example.com/"})
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"]["code"] == "unauthorized"


def test_revoked_key_is_refused_within_the_auth_cache_time(stack: Stack, api: Api) -> None:
    # The API may reuse a key check for SOUS_AUTH_CACHE_SECONDS (5 s by default).
    key = stack.create_key_with_cli("revocation")
    with api.client(key) as client:
        assert client.get("/v1/jobs").status_code == 200
        stack.run("sous", "keys", "revoke", key)
        response = wait_until(
            lambda: (r := client.get("/v1/jobs")).status_code == 401 and r,
            timeout=10,
            what="the revoked key to be refused",
            interval=0.2,
        )
    assert "revoked" in response.json()["error"]["message"]


def test_revocation_is_immediate_with_the_auth_cache_off(stack: Stack) -> None:
    api = stack.start_api(env={**stack.env, "SOUS_AUTH_CACHE_SECONDS": "0"})
    key = stack.create_key_with_cli("revocation-now")
    with api.client(key) as client:
        assert client.get("/v1/jobs").status_code == 200
        stack.run("sous", "keys", "revoke", key)
        assert client.get("/v1/jobs").status_code == 401


def test_a_tenant_sees_only_its_own_jobs(stack: Stack, api: Api, origin: Origin) -> None:
    with api.client(stack.create_key("alice")) as alice, api.client(stack.create_key("bob")) as bob:
        job = alice.post("/v1/fetches", json={"url": f"{origin.url}/ok"}).json()

        assert alice.get(f"/v1/jobs/{job['id']}").status_code == 200
        not_found = bob.get(f"/v1/jobs/{job['id']}")
        assert not_found.status_code == 404
        assert not_found.json()["error"]["code"] == "job_not_found"
        assert bob.post(f"/v1/jobs/{job['id']}/cancel").status_code == 404
        assert job["id"] not in [j["id"] for j in bob.get("/v1/jobs").json()["items"]]
        assert job["id"] in [j["id"] for j in alice.get("/v1/jobs").json()["items"]]


def test_same_idempotency_key_and_body_return_the_same_job(
    client: httpx.Client, origin: Origin
) -> None:
    body = {"url": f"{origin.url}/ok?idem=1"}
    headers = {"Idempotency-Key": "order-42"}

    first = client.post("/v1/fetches", json=body, headers=headers)
    second = client.post("/v1/fetches", json=body, headers=headers)

    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    listed = [
        j for j in client.get("/v1/jobs").json()["items"] if j["params"]["url"] == body["url"]
    ]
    assert len(listed) == 1

    reused = client.post("/v1/fetches", json={"url": f"{origin.url}/other"}, headers=headers)
    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"


def test_idempotency_keys_are_per_tenant(stack: Stack, api: Api, origin: Origin) -> None:
    body = {"url": f"{origin.url}/ok?idem=2"}
    headers = {"Idempotency-Key": "shared-key"}
    with api.client(stack.create_key("idem-a")) as a, api.client(stack.create_key("idem-b")) as b:
        job_a = a.post("/v1/fetches", json=body, headers=headers).json()
        job_b = b.post("/v1/fetches", json=body, headers=headers).json()
    assert job_a["id"] != job_b["id"]
