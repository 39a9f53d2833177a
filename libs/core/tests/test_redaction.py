"""Masking API keys in text that leaves a process."""

from __future__ import annotations

from sqlalchemy.orm import Session

from sous_core import apikeys
from sous_core.redaction import redact


def test_an_issued_key_keeps_its_prefix_and_loses_its_secret(session: Session) -> None:
    tenant, _ = apikeys.get_or_create_tenant(session, "acme")
    token = apikeys.create_key(session, tenant).token
    parts = apikeys.split_token(token)
    assert parts is not None
    prefix, secret = parts

    masked = redact(f"GET /v1/jobs/{token}?api_key={token}x&limit=2")

    assert secret not in masked
    assert masked == f"GET /v1/jobs/sous_{prefix}_***?api_key=sous_{prefix}_***&limit=2"


def test_text_without_a_key_is_left_alone() -> None:
    for text in (
        "job 0b5c7e7e-6c44-4a0e-9d0f-1d2d3c4b5a69 succeeded in 0.2s",
        "sous_keys_list and sous_abc_short are not keys",
        "",
    ):
        assert redact(text) == text
