"""PostgreSQL unreachable: the API answers 503 with Retry-After, not 500, and is not ready."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.stack import free_port, make_stack

pytestmark = pytest.mark.integration


def test_an_unreachable_database_is_503_with_retry_after(tmp_path: Path) -> None:
    with make_stack(tmp_path) as stack:
        key = stack.create_key("outage")
        # Nothing listens on this port: every query fails to connect, as while PostgreSQL restarts.
        down = {
            **stack.env,
            "SOUS_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x",
        }
        api = stack.start_api(env=down)
        with api.client(key) as client:
            for response in (
                client.post("/v1/fetches", json={"url": "http://127.0.0.1:9/"}),
                client.get("/v1/jobs"),
            ):
                assert response.status_code == 503, response.text
                assert response.json()["error"]["code"] == "database_unavailable"
                assert int(response.headers["Retry-After"]) > 0
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["database"].startswith("unreachable")
        assert "Traceback" not in api.proc.log()
