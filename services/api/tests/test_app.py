"""The API app in-process: probes, auth, the error shape, body limits, the 503 path."""

from __future__ import annotations

import inspect
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient


def test_healthz_needs_nothing_but_the_process(app_client: TestClient) -> None:
    assert app_client.get("/healthz").json() == {"status": "ok"}


def test_readyz_names_the_unreachable_broker(app_client: TestClient) -> None:
    response = app_client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "ok"
    assert response.json()["checks"]["broker"].startswith("unreachable")


def test_missing_key_is_401_in_the_error_shape(app_client: TestClient) -> None:
    response = app_client.get("/v1/jobs")
    assert response.status_code == 401
    assert set(response.json()) == {"error"}
    assert set(response.json()["error"]) == {"code", "message"}


def test_submit_without_a_broker_is_503_and_the_job_is_recorded_failed(
    app_client: TestClient, api_key: str
) -> None:
    auth = {"Authorization": f"Bearer {api_key}"}
    response = app_client.post("/v1/fetches", json={"url": "https://example.com/"}, headers=auth)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "broker_unavailable"
    [job] = app_client.get("/v1/jobs", headers=auth).json()["items"]
    assert job["state"] == "failed"
    assert job["error"]["code"] == "broker_unavailable"
    assert job["finished_at"] is not None


def test_declared_body_over_the_limit_is_413_before_auth(app_client: TestClient) -> None:
    response = app_client.post(
        "/v1/fetches", content=b"x" * 5000, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert "4096" in response.json()["error"]["message"]


def test_the_openapi_document_states_the_bearer_key_on_every_v1_operation(
    app_client: TestClient,
) -> None:
    document = app_client.get("/openapi.json").json()
    scheme = document["components"]["securitySchemes"]["apiKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    operations = [
        (path, method, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]
    assert any(path.startswith("/v1/") for path, _, _ in operations)
    for path, method, operation in operations:
        expected = [{"apiKey": []}] if path.startswith("/v1/") else None
        assert operation.get("security") == expected, (method, path)
        if expected:
            assert "401" in operation["responses"], (method, path)


def test_a_non_bearer_authorization_header_is_401_in_the_error_shape(
    app_client: TestClient,
) -> None:
    response = app_client.get("/v1/jobs", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthorized"


def test_no_route_dependency_runs_in_a_worker_thread(app_client: TestClient) -> None:
    """FastAPI runs a plain ``def`` dependency in the thread pool: a thread hop on every
    request, holding one of the tokens the database work waits for."""

    def sync_dependencies(dependant: Dependant) -> list[str]:
        found = []
        for dependency in dependant.dependencies:
            call = dependency.call
            # A function, or an instance whose class defines __call__ (HTTPBearer).
            target = call if inspect.isroutine(call) else type(call).__call__
            if not inspect.iscoroutinefunction(target):
                found.append(getattr(call, "__name__", repr(call)))
            found += sync_dependencies(dependency)
        return found

    def api_routes(routes: list[Any]) -> list[APIRoute]:
        found = []
        for route in routes:
            if isinstance(route, APIRoute):
                found.append(route)
            elif hasattr(route, "original_router"):  # an included router (FastAPI ≥ 0.16x)
                found += api_routes(route.original_router.routes)
        return found

    routes = api_routes(app_client.app.routes)
    assert any(route.path == "/v1/fetches" for route in routes)
    offenders = {route.path: sync_dependencies(route.dependant) for route in routes}
    assert {path: names for path, names in offenders.items() if names} == {}
