"""Parameters of an email job (``POST /v1/emails``), checked so no value can forge a header."""

from __future__ import annotations

import email.utils
import re
from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

#: Longest subject, header value or header line RFC 5322 allows (characters, CRLF excluded).
MAX_HEADER_LENGTH = 998
#: Most extra headers one email may carry.
MAX_EXTRA_HEADERS = 20

# An RFC 5322 field name: printable US-ASCII (33-126) except the colon.
_FIELD_NAME = re.compile(r"[!-9;-~]+")
# Control characters other than tab, plus the Unicode line separators str.splitlines() honours.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029]")
# Headers Sous writes itself, and the field of the request body that sets each, if any.
_MANAGED_HEADERS: dict[str, str | None] = {
    "from": None,
    "to": "to",
    "cc": "cc",
    "bcc": "bcc",
    "subject": "subject",
    "reply-to": "reply_to",
    "date": None,
    "message-id": None,
    "mime-version": None,
    "sender": None,
    "return-path": None,
    "x-sous-job-id": None,
}


def check_header_text(what: str, value: str) -> str:
    """``value`` unchanged if it cannot break out of its header line, else a ``ValueError``."""
    if "\r" in value or "\n" in value:
        raise ValueError(f"{what} must not contain line breaks (CR or LF)")
    if _CONTROL_CHARS.search(value):
        raise ValueError(f"{what} must not contain control characters")
    return value


def normalise_address(address: str) -> str:
    """``a@example.com`` or ``Name <a@example.com>``, validated and normalised, or a ``ValueError``.

    >>> normalise_address("Bob, Jr. <Bob@Example.COM>")
    '"Bob, Jr." <Bob@example.com>'
    """
    check_header_text(f"the address {address!r}", address)
    text = address.strip()
    name = ""
    if text.endswith(">") and "<" in text:
        name, _, bracketed = text[:-1].rpartition("<")
        name, text = _unquote(name.strip()), bracketed.strip()
    try:
        # A non-ASCII mailbox would need SMTPUTF8 from every server on the way; refuse it.
        valid = validate_email(text, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise ValueError(f"{text!r} is not a valid email address: {exc}") from None
    # An internationalised domain goes out in its ASCII (IDNA) form.
    return email.utils.formataddr((name, valid.ascii_email or valid.normalized))


def bare_address(address: str) -> str:
    """The ``a@example.com`` part of a normalised address."""
    return email.utils.parseaddr(address)[1]


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return re.sub(r"\\(.)", r"\1", name[1:-1])
    return name


def _check_subject(subject: str) -> str:
    return check_header_text("the subject", subject)


def _check_headers(headers: dict[str, str]) -> dict[str, str]:
    if len(headers) > MAX_EXTRA_HEADERS:
        raise ValueError(f"at most {MAX_EXTRA_HEADERS} headers are allowed, got {len(headers)}")
    seen: set[str] = set()
    for name, value in headers.items():
        check_header_text(f"the header name {name!r}", name)
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(
                f"{name!r} is not a valid header name: use printable ASCII without spaces or ':'"
            )
        key = name.lower()
        if key in _MANAGED_HEADERS or key.startswith("content-"):
            raise ValueError(_managed_header_message(name))
        if key in seen:
            raise ValueError(f"the header {name!r} is given twice (header names ignore case)")
        seen.add(key)
        check_header_text(f"the value of the header {name!r}", value)
        if len(value) > MAX_HEADER_LENGTH:
            raise ValueError(
                f"the value of the header {name!r} is longer than {MAX_HEADER_LENGTH} characters"
            )
    return headers


def _managed_header_message(name: str) -> str:
    key = name.lower()
    if key.startswith("content-"):
        return f"the header {name!r} is set by Sous from the text and html fields"
    field = _MANAGED_HEADERS[key]
    if field is None:
        return f"the header {name!r} is set by Sous"
    return f"the header {name!r} is set by Sous; use the {field} field"


EmailAddress = Annotated[
    str,
    AfterValidator(normalise_address),
    Field(examples=["ada@example.com", "Ada Lovelace <ada@example.com>"]),
]


class EmailParams(BaseModel):
    """Send one email through the operator's SMTP server, from the configured sender."""

    model_config = ConfigDict(extra="forbid")

    to: list[EmailAddress] = Field(
        min_length=1,
        description="Recipients shown in the To header: `a@example.com` or `Name <a@example.com>`.",
        examples=[["Ada Lovelace <ada@example.com>"]],
    )
    cc: list[EmailAddress] = Field(
        default_factory=list,
        description="Recipients shown in the Cc header.",
        examples=[["grace@example.com"]],
    )
    bcc: list[EmailAddress] = Field(
        default_factory=list,
        description="Recipients who get the email without appearing in any header.",
        examples=[["audit@example.com"]],
    )
    subject: Annotated[str, AfterValidator(_check_subject)] = Field(
        min_length=1,
        max_length=MAX_HEADER_LENGTH,
        description="Subject line, without line breaks.",
        examples=["Your export is ready"],
    )
    text: str | None = Field(
        default=None,
        description="Plain-text body. Give `text`, `html` or both (sent as alternatives).",
        examples=["Hello Ada,\n\nyour export is ready.\n"],
    )
    html: str | None = Field(
        default=None,
        description="HTML body. Give `text`, `html` or both (sent as alternatives).",
        examples=["<p>Hello Ada,</p><p>your export is ready.</p>"],
    )
    reply_to: EmailAddress | None = Field(
        default=None,
        description="Address replies go to (Reply-To header), if not the sender.",
        examples=["support@example.com"],
    )
    headers: Annotated[dict[str, str], AfterValidator(_check_headers)] = Field(
        default_factory=dict,
        description=(
            f"Extra headers, at most {MAX_EXTRA_HEADERS}. Headers Sous sets itself (From, To, "
            "Cc, Bcc, Subject, Reply-To, Date, Message-ID, MIME-Version, Sender, Return-Path, "
            "Content-*) are refused."
        ),
        examples=[{"List-Unsubscribe": "<mailto:unsubscribe@example.com>"}],
    )

    @model_validator(mode="after")
    def _has_body(self) -> EmailParams:
        if not self.text and not self.html:
            raise ValueError("give the email a text or an html body, or both")
        return self

    def recipient_count(self) -> int:
        """Addresses in to, cc and bcc together (the API compares it to its limit)."""
        return len(self.to) + len(self.cc) + len(self.bcc)

    def all_recipients(self) -> list[str]:
        """Bare addresses of every recipient, each once: the SMTP envelope."""
        addresses = (bare_address(address) for address in [*self.to, *self.cc, *self.bcc])
        return list(dict.fromkeys(addresses))

    def body_bytes(self) -> int:
        """Size of the text and html bodies together, in UTF-8 bytes."""
        return sum(len(body.encode()) for body in (self.text, self.html) if body)
