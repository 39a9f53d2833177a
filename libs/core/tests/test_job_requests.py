"""Stored job bodies turned into submissions, checked exactly as the API checks them."""

from __future__ import annotations

from typing import Any

import pytest

from sous_core.job_requests import InvalidJob, JobSubmission, parse_job
from sous_core.submissions import SubmissionRefused


def test_a_fetch_body_becomes_a_fetch_job() -> None:
    body = {"kind": "fetch", "url": "https://example.com/feed", "callback_url": "https://a.test/h"}
    assert parse_job(body) == JobSubmission(
        "fetch", {"url": "https://example.com/feed", "store_body": False}, "https://a.test/h"
    )
    assert body["kind"] == "fetch", "the stored body is left as it was"


def test_a_fetch_body_with_urls_becomes_a_batch() -> None:
    submission = parse_job({"kind": "fetch", "urls": ["https://a.test/", "https://b.test/"]})
    assert submission.kind == "fetch_batch"
    assert submission.params["urls"] == ["https://a.test/", "https://b.test/"]


def test_an_email_body_becomes_an_email_job_without_its_callback_in_the_params() -> None:
    submission = parse_job(
        {
            "kind": "email",
            "to": ["Ada <ada@example.com>"],
            "subject": "Weekly report",
            "text": "Attached.",
            "callback_url": "https://a.test/hook",
        }
    )
    assert submission.kind == "email"
    assert submission.callback_url == "https://a.test/hook"
    assert "callback_url" not in submission.params
    assert submission.params["subject"] == "Weekly report"


@pytest.mark.parametrize(
    ("body", "problems"),
    [
        ({"url": "https://example.com/"}, [("kind", "missing; the job's kind must be one of")]),
        ({"kind": 3}, [("kind", "3 is not one")]),
        ({"kind": "fetch", "url": "ftp://x.test/"}, [("url", "only http:// and https://")]),
        ({"kind": "fetch", "url": "https://x.test/", "extra": 1}, [("extra", "Extra inputs")]),
        (
            {"kind": "email", "to": ["nobody"], "text": "t"},
            [("to.0", "nobody"), ("subject", "Field required")],
        ),
        ("fetch https://x.test/", [("job", "must be an object")]),
    ],
)
def test_an_invalid_body_names_each_field_and_why(
    body: Any, problems: list[tuple[str, str]]
) -> None:
    with pytest.raises(InvalidJob) as raised:
        parse_job(body)
    assert [field for field, _ in raised.value.problems] == [field for field, _ in problems]
    for (_, reason), (_, expected) in zip(raised.value.problems, problems, strict=True):
        assert expected in reason


def test_transcode_is_refused_until_this_installation_offers_it() -> None:
    with pytest.raises(SubmissionRefused) as raised:
        parse_job({"kind": "transcode", "input_url": "https://example.com/a.mp4"})
    assert (raised.value.status, raised.value.code) == (422, "job_kind_unavailable")
    assert raised.value.message == (
        "transcode schedules need the transcode job kind, which this installation "
        "does not offer yet."
    )


@pytest.mark.parametrize(
    ("body", "status", "code", "mentions"),
    [
        (
            {"to": [f"r{i}@example.com" for i in range(51)], "subject": "s", "text": "t"},
            422,
            "too_many_recipients",
            "this one has 51",
        ),
        (
            {"to": ["a@example.com"], "subject": "s", "text": "x" * 600_000},
            413,
            "email_too_large",
            "bytes",
        ),
    ],
)
def test_an_email_past_the_limits_is_refused_like_the_api_refuses_it(
    body: dict[str, Any], status: int, code: str, mentions: str
) -> None:
    with pytest.raises(SubmissionRefused) as raised:
        parse_job({"kind": "email", **body})
    assert (raised.value.status, raised.value.code) == (status, code)
    assert mentions in raised.value.message
