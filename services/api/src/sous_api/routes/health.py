"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from sous_api.deps import CeleryDep
from sous_core.db.engine import get_engine

router = APIRouter(tags=["health"])


class Readiness(BaseModel):
    status: str
    #: ``ok`` or ``unreachable: <error>``, by dependency (``database``, ``broker``).
    checks: dict[str, str]


#: Seconds each readiness check may take.
READINESS_TIMEOUT = 2.0


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive (no dependency is checked)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency does not answer."}},
)
def readyz(celery: CeleryDep) -> JSONResponse:
    """Ready when the database and the broker both answer; 503 naming what failed."""
    checks: dict[str, Any] = {}
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        with celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=READINESS_TIMEOUT)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unreachable: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )
