"""Every error the API returns has one shape: ``{"error": {"code": ..., "message": ...}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SqlAlchemyTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("sous.api")

STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    503: "service_unavailable",
}


class FieldProblem(BaseModel):
    field: str = Field(
        description="Where the problem is: ``url``, ``options.preset``, ``query.limit``."
    )
    message: str


class ErrorInfo(BaseModel):
    code: str = Field(description="Stable and machine-readable, e.g. ``job_not_found``.")
    message: str = Field(description="What went wrong, for people.")
    details: list[FieldProblem] | None = Field(
        default=None, description="Each problem of a ``validation_error``."
    )


class ErrorResponse(BaseModel):
    """The body of every error the API answers."""

    error: ErrorInfo


#: What each documented error status means, across routes.
ERROR_DESCRIPTIONS = {
    400: "Malformed request: the body is not valid JSON or multipart, or a cursor is not one "
    "this API returned.",
    401: "No API key, or one that is unknown, revoked or expired.",
    404: "No such resource for this tenant (another tenant's ids are not found either).",
    409: "The request conflicts with the resource's state.",
    410: "The resource existed but is no longer stored.",
    413: "The request body, upload or email is larger than the limit.",
    415: "The request's content type is not one the route takes.",
    422: "The request is well-formed but invalid; ``details`` names each problem.",
    429: "Rate limit or daily quota exceeded; retry after ``Retry-After`` seconds when given.",
    503: "A dependency (the broker or the job database) is unavailable; retry after "
    "``Retry-After`` seconds.",
}
_RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer"},
    }
}


def error_responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each with the error body's schema.

    ``APIRouter(responses=error_responses(401, 422, 429))`` documents them for every
    route of the router; a route adds its own with ``responses=error_responses(404)``.
    """
    return {
        code: {
            "model": ErrorResponse,
            "description": ERROR_DESCRIPTIONS[code],
            **({"headers": _RETRY_AFTER_HEADER} if code in (429, 503) else {}),
        }
        for code in status_codes
    }


#: Every route under ``/v1``: needs a key, is rate limited, validates its parameters, and
#: answers 503 while the job database is unreachable.
AUTHENTICATED_ROUTE_ERRORS = error_responses(401, 422, 429, 503)
#: Seconds a client should wait before retrying when the database is unreachable.
DATABASE_RETRY_AFTER_SECONDS = 5


class ApiError(Exception):
    """An error answered as JSON with a stable ``code`` and a readable ``message``."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = headers
        self.details = details


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


def error_response(
    status_code: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    details: Any = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(code, message, details), status_code=status_code, headers=headers
    )


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if part != "body") or "body"


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.code, exc.message, exc.headers, exc.details)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = STATUS_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, getattr(exc, "headers", None))


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(error.get("type") == "json_invalid" for error in errors):
        return error_response(400, "malformed_json", "The request body is not valid JSON.")
    details = [
        {"field": _location(tuple(error.get("loc", ()))), "message": error.get("msg", "")}
        for error in errors
    ]
    summary = "; ".join(f"{detail['field']}: {detail['message']}" for detail in details[:5])
    return error_response(422, "validation_error", f"Invalid request: {summary}", None, details)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The database refused or dropped the connection: the client may retry, it is not a bug."""
    logger.warning(
        "database unavailable on %s %s: %s",
        request.method,
        request.url.path,
        exc.__class__.__name__,
    )
    return error_response(
        503,
        "database_unavailable",
        "The job database is unreachable right now. Retry shortly; a submission retried with "
        "the same Idempotency-Key is never accepted twice.",
        {"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "An unexpected error occurred.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    # Connection refused, dropped or timed out (pool exhausted); not constraint violations.
    for unavailable in (OperationalError, InterfaceError, SqlAlchemyTimeout):
        app.add_exception_handler(unavailable, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected_error)
