"""API keys: shown once, stored hashed, refused when revoked or expired."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from sous_core import apikeys
from sous_core.db.models import ApiKey


def test_created_key_authenticates_and_is_stored_only_as_a_hash(session: Session) -> None:
    tenant, created = apikeys.get_or_create_tenant(session, "acme")
    issued = apikeys.create_key(session, tenant, name="ci")
    session.commit()

    assert created
    assert issued.token.startswith(f"sous_{issued.key.prefix}_")
    principal = apikeys.authenticate(session, issued.token)
    assert principal is not None
    assert principal.tenant_name == "acme"
    stored = session.execute(select(ApiKey)).scalar_one()
    secret = issued.token.split("_", 2)[2]
    assert secret not in stored.secret_sha256
    assert len(stored.secret_sha256) == 64


def test_wrong_secret_unknown_prefix_and_junk_are_refused(session: Session) -> None:
    tenant, _ = apikeys.get_or_create_tenant(session, "acme")
    issued = apikeys.create_key(session, tenant)
    session.commit()
    prefix = issued.key.prefix
    for token in (
        f"sous_{prefix}_wrong",
        "sous_ffffffffffff_x",
        "garbage",
        "",
        "sous__",
        issued.token + "x",
        issued.token.replace("sous_", "other_"),
    ):
        assert apikeys.authenticate(session, token) is None, token


def test_revoked_and_expired_keys_are_refused(session: Session) -> None:
    tenant, _ = apikeys.get_or_create_tenant(session, "acme")
    revoked = apikeys.create_key(session, tenant)
    expired = apikeys.create_key(
        session, tenant, expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    future = apikeys.create_key(session, tenant, expires_at=datetime.now(UTC) + timedelta(days=1))
    apikeys.revoke_key(session, revoked.key.prefix)
    session.commit()

    assert apikeys.authenticate(session, revoked.token) is None
    assert apikeys.authenticate(session, expired.token) is None
    assert apikeys.authenticate(session, future.token) is not None
    assert apikeys.revoke_key(session, "nosuchprefix") is None


def test_tenant_is_reused_by_name(session: Session) -> None:
    first, created_first = apikeys.get_or_create_tenant(session, "acme")
    second, created_second = apikeys.get_or_create_tenant(session, "acme")
    assert (created_first, created_second) == (True, False)
    assert first.id == second.id
