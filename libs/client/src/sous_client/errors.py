"""Typed exceptions for every error the Sous API answers, and for the client's own failures.

The API always answers ``{"error": {"code": ..., "message": ..., "details": ...}}``;
:func:`error_from_response` turns that (or whatever a proxy sent instead) into the
matching exception::

    try:
        client.submit_fetch("https://example.com/")
    except QuotaExceeded as exc:
        print(exc.code, exc.message, exc.retry_after)
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Longest part of a non-JSON error body quoted in the exception's message.
MAX_QUOTED_BODY = 200


@dataclass(frozen=True)
class FieldError:
    """One refused field of a ``422 validation_error``: ``field`` is dotted (``options.preset``)."""

    field: str
    message: str


class SousError(Exception):
    """Any error from the Sous API or from reaching it.

    ``code`` is the API's stable error code (``quota_exceeded``, ``job_not_found``...),
    ``message`` its readable explanation, ``status`` the HTTP status (None when no answer
    came), ``details`` the API's ``details`` field as sent.
    """

    default_code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.status = status
        self.details = details
        #: Seconds the server asked to wait before trying again (``Retry-After``), if it did.
        self.retry_after = retry_after

    def __str__(self) -> str:
        prefix = f"{self.status} " if self.status is not None else ""
        return f"{prefix}{self.code}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """The error in the API's own shape, for ``--json`` output."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.status is not None:
            error["status"] = self.status
        if self.details is not None:
            error["details"] = self.details
        if self.retry_after is not None:
            error["retry_after"] = self.retry_after
        return {"error": error}


class BadRequest(SousError):
    """400: a malformed request (bad JSON, a bad cursor, a bad ``Idempotency-Key``)."""

    default_code = "bad_request"


class Unauthorized(SousError):
    """401: no API key, or one that is unknown, revoked or expired."""

    default_code = "unauthorized"


class Forbidden(SousError):
    """403: the key may not do this."""

    default_code = "forbidden"


class NotFound(SousError):
    """404: no such job or schedule for this tenant (another tenant's is a 404 too)."""

    default_code = "not_found"


class Conflict(SousError):
    """409: the resource is not in a state that allows this (cancelling a finished job)."""

    default_code = "conflict"


class Gone(SousError):
    """410: the job's output is no longer stored (purged after the retention period)."""

    default_code = "gone"


class PayloadTooLarge(SousError):
    """413: the request body, uploaded file or email is over the server's limit."""

    default_code = "payload_too_large"


class ValidationError(SousError):
    """422: the request was understood but refused; ``errors`` names each bad field."""

    default_code = "validation_error"

    @property
    def errors(self) -> list[FieldError]:
        if not isinstance(self.details, list):
            return []
        return [
            FieldError(str(item.get("field", "")), str(item.get("message", "")))
            for item in self.details
            if isinstance(item, dict)
        ]


class RateLimited(SousError):
    """429: too many requests; ``retry_after`` says how long to wait, when the server knows."""

    default_code = "too_many_requests"


class QuotaExceeded(RateLimited):
    """429 ``quota_exceeded``: the tenant's daily quota is spent until 00:00 UTC.

    ``retry_after`` is the seconds until the reset, or None for a job larger than the
    whole quota (waiting would not help).
    """

    default_code = "quota_exceeded"


class Unavailable(SousError):
    """503: the API or its job queue is down for now; nothing was queued. Safe to retry."""

    default_code = "service_unavailable"


class ServerError(SousError):
    """Any other 5xx: the server failed."""

    default_code = "server_error"


class ConnectionFailed(SousError):
    """No answer: the API could not be reached, or the connection broke mid-request."""

    default_code = "connection_failed"


class EventsUnavailable(SousError):
    """The server offers no event stream for jobs (an older API, or a proxy in the way)."""

    default_code = "events_unavailable"


class WaitTimeout(SousError, TimeoutError):
    """``wait`` gave up before the job finished; ``job`` is the job as last seen."""

    default_code = "wait_timeout"

    def __init__(self, message: str, *, job: Any) -> None:
        super().__init__(message)
        self.job = job


STATUS_ERRORS: dict[int, type[SousError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: PayloadTooLarge,
    422: ValidationError,
    429: RateLimited,
    503: Unavailable,
}
CODE_ERRORS: dict[str, type[SousError]] = {"quota_exceeded": QuotaExceeded}


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds: a number of seconds or an HTTP date; None if absent or bad."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def error_class(status: int, code: str | None) -> type[SousError]:
    if code in CODE_ERRORS:
        return CODE_ERRORS[code]
    if status in STATUS_ERRORS:
        return STATUS_ERRORS[status]
    return ServerError if status >= 500 else SousError


def error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> SousError:
    """The exception for an error answer: the API's ``error`` object, or a proxy's page."""
    code: str | None = None
    message = ""
    details: Any = None
    try:
        payload = json.loads(body) if body else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        code = str(error["code"]) if error.get("code") is not None else None
        message = str(error.get("message") or "")
        details = error.get("details")
    if not message:
        quoted = body.decode("utf-8", "replace").strip()[:MAX_QUOTED_BODY]
        message = f"HTTP {status}" + (f": {quoted}" if quoted else "")
    retry_after = parse_retry_after(headers.get("retry-after"))
    cls = error_class(status, code)
    return cls(message, code=code, status=status, details=details, retry_after=retry_after)
