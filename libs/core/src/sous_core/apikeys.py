"""Tenants and their API keys: keys are random, stored as SHA-256, shown once."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from sous_core.db.models import ApiKey, Tenant, utcnow

KEY_SCHEME = "sous"


@dataclass(frozen=True)
class IssuedKey:
    """A key just created: ``token`` is the only time the secret is visible."""

    key: ApiKey
    token: str


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant a valid key belongs to."""

    tenant_id: uuid.UUID
    tenant_name: str
    key_id: uuid.UUID
    #: When the key stops being valid (``None``: never, unless revoked).
    key_expires_at: datetime | None = None


def _digest(secret: str) -> str:
    # The secret is 256 random bits, so a plain hash is as strong as a slow KDF here.
    return hashlib.sha256(secret.encode()).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> tuple[Tenant, bool]:
    tenant = session.execute(select(Tenant).where(Tenant.name == name)).scalar_one_or_none()
    if tenant is not None:
        return tenant, False
    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    return tenant, True


def create_key(
    session: Session, tenant: Tenant, name: str = "", expires_at: datetime | None = None
) -> IssuedKey:
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    key = ApiKey(
        tenant_id=tenant.id,
        prefix=prefix,
        secret_sha256=_digest(secret),
        name=name,
        expires_at=expires_at,
    )
    session.add(key)
    session.flush()
    return IssuedKey(key=key, token=f"{KEY_SCHEME}_{prefix}_{secret}")


def split_token(token: str) -> tuple[str, str] | None:
    scheme, _, rest = token.partition("_")
    prefix, _, secret = rest.partition("_")
    if scheme != KEY_SCHEME or not prefix or not secret:
        return None
    return prefix, secret


def authenticate(session: Session, token: str) -> Principal | None:
    """The principal behind a bearer token, or ``None`` if unknown, revoked or expired."""
    parts = split_token(token)
    if parts is None:
        return None
    prefix, secret = parts
    row = session.execute(
        select(ApiKey, Tenant.name)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.prefix == prefix)
    ).one_or_none()
    if row is None:
        return None
    key, tenant_name = row
    if not hmac.compare_digest(key.secret_sha256, _digest(secret)):
        return None
    now = utcnow()
    if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
        return None
    return Principal(
        tenant_id=key.tenant_id,
        tenant_name=tenant_name,
        key_id=key.id,
        key_expires_at=key.expires_at,
    )


def revoke_key(session: Session, prefix: str) -> ApiKey | None:
    """Revoke the key with this prefix (``sous_<prefix>_…``); ``None`` if there is none."""
    key = session.execute(select(ApiKey).where(ApiKey.prefix == prefix)).scalar_one_or_none()
    if key is not None and key.revoked_at is None:
        key.revoked_at = utcnow()
    return key


def list_keys(session: Session, tenant_name: str | None = None) -> list[tuple[ApiKey, str]]:
    statement = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id)
    if tenant_name is not None:
        statement = statement.where(Tenant.name == tenant_name)
    return [(key, name) for key, name in session.execute(statement.order_by(ApiKey.created_at))]


@dataclass(frozen=True)
class KeyCounts:
    """Keys by status, for the metrics: usable now, and usable but expiring soon."""

    active: int
    expiring_soon: int


def key_counts(session: Session, now: datetime, warning_days: int) -> KeyCounts:
    """How many keys are usable, and how many of them expire within ``warning_days``."""
    usable = and_(
        ApiKey.revoked_at.is_(None), or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now)
    )
    soon = and_(usable, ApiKey.expires_at <= now + timedelta(days=warning_days))
    active, expiring = session.execute(
        select(
            func.count().filter(usable),
            func.count().filter(soon),
        ).select_from(ApiKey)
    ).one()
    return KeyCounts(active=int(active), expiring_soon=int(expiring))
