"""Per-tenant rate limits shared by API replicas, security headers, and CORS only when asked."""

from __future__ import annotations

import httpx
import pytest

from support.stack import Api, Origin, Stack, free_port, wait_for_job

pytestmark = pytest.mark.integration

#: One token back per 100 s: within a test the bucket only empties.
SLOW_REFILL = {"SOUS_RATE_LIMIT_PER_SECOND": "0.01", "SOUS_RATE_LIMIT_BURST": "3"}


def assert_security_headers(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"


def test_a_tenant_past_its_rate_gets_429_across_replicas(stack: Stack) -> None:
    env = {**stack.env, **SLOW_REFILL}
    first, second = stack.start_api(env), stack.start_api(env)
    key, other_key = stack.create_key("rate-limited"), stack.create_key("rate-neighbour")
    with first.client(key) as on_first, second.client(key) as on_second:
        # The burst of 3 is spent across both replicas: the bucket is shared.
        assert [c.get("/v1/jobs").status_code for c in (on_first, on_second, on_first)] == [
            200,
            200,
            200,
        ]
        limited = on_second.get("/v1/jobs")
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 100
        assert_security_headers(limited)
        # Submissions count too.
        refused = on_first.post("/v1/fetches", json={"url": "https://example.com/"})
        assert refused.status_code == 429
    with first.client(other_key) as neighbour:
        assert neighbour.get("/v1/jobs").status_code == 200  # buckets are per tenant


def test_the_rate_limiter_fails_open_without_redis(stack: Stack) -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    env = {
        **stack.env,
        "SOUS_RATE_LIMIT_PER_SECOND": "0.01",
        "SOUS_RATE_LIMIT_BURST": "1",
        "SOUS_RATE_LIMIT_REDIS_URL": unreachable,
    }
    api = stack.start_api(env)
    with api.client(stack.create_key("redis-down")) as client:
        assert [client.get("/v1/jobs").status_code for _ in range(3)] == [200, 200, 200]
        submitted = client.post("/v1/fetches", json={"url": "https://example.com/"})
        assert submitted.status_code == 202, submitted.text
    assert "rate limiter: Redis did not answer" in api.proc.log()


def test_every_response_carries_the_security_headers(
    api: Api, client: httpx.Client, origin: Origin
) -> None:
    listed = client.get("/v1/jobs")
    assert_security_headers(listed)
    assert listed.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in listed.headers["content-security-policy"]

    with api.client() as anonymous:
        refused = anonymous.get("/v1/jobs")
        health = anonymous.get("/healthz")
        docs = anonymous.get("/docs")
    assert refused.status_code == 401
    assert_security_headers(refused)
    assert refused.headers["cache-control"] == "no-store"
    assert_security_headers(health)
    assert_security_headers(docs)
    assert "content-security-policy" not in docs.headers  # Swagger UI loads its scripts

    job = client.post("/v1/fetches", json={"url": f"{origin.url}/ok", "store_body": True}).json()
    assert wait_for_job(client, job["id"], {"succeeded", "failed"})["state"] == "succeeded"
    download = client.get(f"/v1/jobs/{job['id']}/output")
    assert download.status_code == 200
    assert download.headers["content-security-policy"] == "sandbox"  # the route's own
    assert_security_headers(download)


def test_cors_is_off_unless_origins_are_configured(stack: Stack, api: Api) -> None:
    preflight = {
        "Origin": "https://app.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    with api.client() as browser:
        assert (
            "access-control-allow-origin"
            not in browser.options("/v1/fetches", headers=preflight).headers
        )
        assert (
            "access-control-allow-origin"
            not in browser.get("/healthz", headers={"Origin": "https://app.example.com"}).headers
        )

    configured = stack.start_api({**stack.env, "SOUS_CORS_ORIGINS": "https://app.example.com"})
    with configured.client() as browser:
        allowed = browser.options("/v1/fetches", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "access-control-allow-credentials" not in allowed.headers
        other = browser.options(
            "/v1/fetches", headers={**preflight, "Origin": "https://evil.example.com"}
        )
        assert "access-control-allow-origin" not in other.headers
        simple = browser.get("/healthz", headers={"Origin": "https://app.example.com"})
        assert simple.headers["access-control-allow-origin"] == "https://app.example.com"
