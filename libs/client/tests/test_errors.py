"""Error answers become typed exceptions carrying the API's code, message and details."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from sous_client import errors
from sous_client.errors import error_from_response, parse_retry_after


def answer(status: int, code: str, message: str, details: object = None, **headers: str):
    error: dict[str, object] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    body = json.dumps({"error": error}).encode()
    return error_from_response(status, {k.replace("_", "-"): v for k, v in headers.items()}, body)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "invalid_cursor", errors.BadRequest),
        (401, "unauthorized", errors.Unauthorized),
        (403, "forbidden", errors.Forbidden),
        (404, "job_not_found", errors.NotFound),
        (409, "job_finished", errors.Conflict),
        (410, "output_gone", errors.Gone),
        (413, "upload_too_large", errors.PayloadTooLarge),
        (413, "email_too_large", errors.PayloadTooLarge),
        (422, "idempotency_key_reused", errors.ValidationError),
        (429, "too_many_requests", errors.RateLimited),
        (429, "quota_exceeded", errors.QuotaExceeded),
        (503, "broker_unavailable", errors.Unavailable),
        (500, "internal_error", errors.ServerError),
        (415, "unsupported_media_type", errors.SousError),
    ],
)
def test_each_status_and_code_has_its_exception(
    status: int, code: str, expected: type[errors.SousError]
) -> None:
    error = answer(status, code, "Something readable.")
    assert type(error) is expected
    assert (error.status, error.code, error.message) == (status, code, "Something readable.")
    assert str(error) == f"{status} {code}: Something readable."


def test_a_quota_error_is_also_rate_limited_and_carries_retry_after() -> None:
    error = answer(429, "quota_exceeded", "Daily quota for jobs:fetch...", retry_after="3600")
    assert isinstance(error, errors.RateLimited)
    assert error.retry_after == 3600
    assert error.to_dict()["error"]["retry_after"] == 3600


def test_validation_details_become_field_errors() -> None:
    details = [
        {"field": "to.0", "message": "'x' is not a valid email address"},
        {"field": "subject", "message": "Field required"},
    ]
    error = answer(422, "validation_error", "Invalid request: ...", details)
    assert isinstance(error, errors.ValidationError)
    assert error.errors == [
        errors.FieldError("to.0", "'x' is not a valid email address"),
        errors.FieldError("subject", "Field required"),
    ]
    assert error.to_dict()["error"]["details"] == details
    assert answer(422, "too_many_recipients", "At most 50.").errors == []


def test_a_proxy_page_instead_of_the_api_error_still_maps_by_status() -> None:
    error = error_from_response(502, {}, b"<html>Bad gateway</html>")
    assert type(error) is errors.ServerError
    assert (error.code, error.message) == ("server_error", "HTTP 502: <html>Bad gateway</html>")
    empty = error_from_response(503, {"retry-after": "5"}, b"")
    assert (type(empty), empty.message, empty.retry_after) == (errors.Unavailable, "HTTP 503", 5)


def test_retry_after_is_seconds_or_an_http_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after("120") == 120
    assert parse_retry_after(later, now=now.timestamp()) == 90
    assert (
        parse_retry_after(
            format_datetime(now - timedelta(hours=1), usegmt=True), now=now.timestamp()
        )
        == 0
    )
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-3") == 0


def test_a_wait_timeout_is_a_timeout_error_holding_the_job() -> None:
    timeout = errors.WaitTimeout("Job x did not finish", job="the job")
    assert isinstance(timeout, TimeoutError)
    assert (timeout.code, timeout.status, timeout.job) == ("wait_timeout", None, "the job")
