"""Tests for EmailParams: what an email body may carry and what it must not."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from sous_core.email_params import EmailParams


def body(**fields: Any) -> dict[str, Any]:
    return {"to": ["ada@example.com"], "subject": "Hello", "text": "Hi Ada"} | fields


def test_minimal_text_email() -> None:
    params = EmailParams.model_validate(body())

    assert params.to == ["ada@example.com"]
    assert params.cc == params.bcc == []
    assert params.html is None
    assert params.reply_to is None
    assert params.headers == {}


def test_named_addresses_keep_the_name_and_normalise_the_domain() -> None:
    params = EmailParams.model_validate(
        body(
            to=["Ada Lovelace <Ada@EXAMPLE.com>", '"Hopper, Grace" <grace@example.com>'],
            cc=["Bob, Jr. <bob@bücher.de>"],
            reply_to="  Support <support@example.com> ",
        )
    )

    assert params.to == ["Ada Lovelace <Ada@example.com>", '"Hopper, Grace" <grace@example.com>']
    assert params.cc == ['"Bob, Jr." <bob@xn--bcher-kva.de>']
    assert params.reply_to == "Support <support@example.com>"


def test_html_only_and_both_bodies() -> None:
    html_only = EmailParams.model_validate(body(text=None, html="<p>Hi</p>"))
    both = EmailParams.model_validate(body(html="<p>Hi</p>"))

    assert (html_only.text, html_only.html) == (None, "<p>Hi</p>")
    assert (both.text, both.html) == ("Hi Ada", "<p>Hi</p>")


def test_extra_headers() -> None:
    headers = {"List-Unsubscribe": "<mailto:stop@example.com>", "X-Campaign": "spring\t2025"}

    assert EmailParams.model_validate(body(headers=headers)).headers == headers


def test_recipients_and_body_size() -> None:
    params = EmailParams.model_validate(
        body(
            to=["Ada <ada@example.com>", "grace@example.com"],
            cc=["ada@example.com"],
            bcc=["audit@example.com"],
            text="héllo",
            html="<b>é</b>",
        )
    )

    assert params.recipient_count() == 4
    assert params.all_recipients() == ["ada@example.com", "grace@example.com", "audit@example.com"]
    assert params.body_bytes() == len("héllo".encode()) + len("<b>é</b>".encode())


INVALID_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("CR in subject", body(subject="Hi\rBcc: x@example.com"), "line breaks (CR or LF)"),
    ("LF in subject", body(subject="Hi\nthere"), "line breaks (CR or LF)"),
    ("LF in header value", body(headers={"X-A": "1\nBcc: x@example.com"}), "line breaks"),
    ("CRLF in header name", body(headers={"X-A\r\nBcc": "x"}), "line breaks (CR or LF)"),
    (
        "LF in display name",
        body(to=["Ada\nBcc: eve@example.com <ada@example.com>"]),
        "line breaks (CR or LF)",
    ),
    ("CR in reply_to", body(reply_to="ada@example.com\r"), "line breaks (CR or LF)"),
    ("control character in subject", body(subject="Hi\x00"), "control characters"),
    ("address without domain", body(to=["bob@"]), "'bob@' is not a valid email address"),
    ("not an address", body(cc=["not an address"]), "is not a valid email address"),
    ("named invalid address", body(bcc=["Bob <bob@@example.com>"]), "not a valid email"),
    ("two addresses in one", body(to=["a@example.com, b@example.com"]), "not a valid email"),
    ("non-ASCII mailbox", body(to=["jörg@example.com"]), "Internationalized characters"),
    ("invalid reply_to", body(reply_to="support"), "'support' is not a valid email address"),
    ("empty to", body(to=[]), "at least 1 item"),
    ("no to", {"subject": "Hi", "text": "x"}, "to\n  Field required"),
    ("no body", body(text=None), "give the email a text or an html body, or both"),
    ("empty bodies", body(text="", html=""), "give the email a text or an html body"),
    ("Bcc header", body(headers={"Bcc": "eve@example.com"}), "'Bcc' is set by Sous; use the bcc"),
    ("From header", body(headers={"from": "eve@example.com"}), "'from' is set by Sous"),
    ("content-type header", body(headers={"content-type": "text/x"}), "'content-type' is set"),
    ("Message-ID header", body(headers={"Message-Id": "<a@b>"}), "'Message-Id' is set by Sous"),
    ("header with a colon", body(headers={"X:A": "1"}), "'X:A' is not a valid header name"),
    ("header with a space", body(headers={"X A": "1"}), "'X A' is not a valid header name"),
    ("empty header name", body(headers={"": "1"}), "'' is not a valid header name"),
    ("header twice", body(headers={"X-A": "1", "x-a": "2"}), "'x-a' is given twice"),
    (
        "too many headers",
        body(headers={f"X-H{i}": "v" for i in range(21)}),
        "at most 20 headers are allowed, got 21",
    ),
    ("header value too long", body(headers={"X-A": "v" * 999}), "longer than 998 characters"),
    ("empty subject", body(subject=""), "at least 1 character"),
    ("subject too long", body(subject="s" * 999), "at most 998 characters"),
    ("unknown field", body(attachments=[]), "attachments\n  Extra inputs are not permitted"),
]


@pytest.mark.parametrize(
    ("fields", "problem"),
    [pytest.param(fields, problem, id=name) for name, fields, problem in INVALID_BODIES],
)
def test_invalid_bodies_are_refused_with_a_readable_message(
    fields: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        EmailParams.model_validate(fields)

    assert problem in str(caught.value)


def test_openapi_schema_documents_fields() -> None:
    properties = EmailParams.model_json_schema()["properties"]

    for name in ("to", "cc", "bcc", "subject", "text", "html", "reply_to", "headers"):
        assert properties[name]["description"]
        assert properties[name]["examples"]
