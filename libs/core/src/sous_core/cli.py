"""``sous``: the operator command line (tenants, keys, webhook secrets, migrations, queues)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from sous_core import apikeys
from sous_core.brokerstats import queue_stats
from sous_core.db import migrate
from sous_core.db.engine import session_scope
from sous_core.db.models import Tenant, new_webhook_secret
from sous_core.settings import get_settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Operate a Sous installation. Settings come from SOUS_* environment variables."""


@main.group()
def db() -> None:
    """Job database migrations."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (safe to run repeatedly)."""
    url = get_settings().database_url
    migrate.upgrade(url, revision)
    click.echo(f"database at revision {migrate.current_revision(url)}")


@db.command("current")
def db_current() -> None:
    """Print the database's current migration revision."""
    click.echo(migrate.current_revision(get_settings().database_url) or "none (empty database)")


@main.group()
def keys() -> None:
    """API keys: each belongs to one tenant and sees only that tenant's jobs."""


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant name; created if it does not exist.")
@click.option("--name", default="", help="A label for the key, e.g. 'ci' or 'web-app'.")
@click.option("--expires-in-days", type=click.IntRange(min=1), help="Expire the key after N days.")
def keys_create(tenant: str, name: str, expires_in_days: int | None) -> None:
    """Create an API key; the key is printed once, as the last line."""
    expires_at = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
    with session_scope() as session:
        tenant_row, created = apikeys.get_or_create_tenant(session, tenant)
        issued = apikeys.create_key(session, tenant_row, name=name, expires_at=expires_at)
    click.echo(f"tenant: {tenant}{' (created)' if created else ''}")
    click.echo(f"key id: {issued.key.prefix}")
    click.echo(f"expires: {expires_at.isoformat() if expires_at else 'never'}")
    click.echo("Store this key now; it cannot be shown again:", err=True)
    click.echo(issued.token)


@keys.command("revoke")
@click.argument("key")
def keys_revoke(key: str) -> None:
    """Revoke KEY, given as its key id or the whole key."""
    parts = apikeys.split_token(key)
    prefix = parts[0] if parts else key
    with session_scope() as session:
        revoked = apikeys.revoke_key(session, prefix)
    if revoked is None:
        raise click.ClickException(f"no key with id {prefix!r}")
    click.echo(f"revoked key {prefix}")


@keys.command("list")
@click.option("--tenant", help="Only this tenant's keys.")
def keys_list(tenant: str | None) -> None:
    """List keys (ids and status only; secrets are never stored)."""
    with session_scope() as session:
        rows = apikeys.list_keys(session, tenant)
    click.echo(f"{'KEY ID':<14} {'TENANT':<20} {'NAME':<16} {'CREATED':<20} STATUS")
    now = datetime.now(UTC)
    for key, tenant_name in rows:
        if key.revoked_at is not None:
            status = "revoked"
        elif key.expires_at is not None and key.expires_at <= now:
            status = "expired"
        else:
            status = "active"
        created = key.created_at.strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{key.prefix:<14} {tenant_name:<20} {key.name:<16} {created:<20} {status}")


@main.group()
def tenants() -> None:
    """Tenants: who owns keys and jobs."""


@tenants.group("webhook-secret")
def webhook_secret() -> None:
    """The key a tenant's webhooks are signed with (HMAC-SHA256, header Sous-Signature)."""


def _tenant(session: Session, name: str) -> Tenant:
    tenant = session.execute(select(Tenant).where(Tenant.name == name)).scalar_one_or_none()
    if tenant is None:
        raise click.ClickException(f"no tenant named {name!r}")
    return tenant


@webhook_secret.command("show")
@click.option("--tenant", required=True, help="Tenant name.")
def webhook_secret_show(tenant: str) -> None:
    """Print the tenant's webhook signing secret (give it to the receiving service)."""
    with session_scope() as session:
        click.echo(_tenant(session, tenant).webhook_secret)


@webhook_secret.command("rotate")
@click.option("--tenant", required=True, help="Tenant name.")
def webhook_secret_rotate(tenant: str) -> None:
    """Replace the tenant's webhook secret; prints the new one. Deliveries from now on use it."""
    with session_scope() as session:
        row = _tenant(session, tenant)
        row.webhook_secret = new_webhook_secret()
        secret = row.webhook_secret
    click.echo("webhook secret rotated; receivers must use the new one:", err=True)
    click.echo(secret)


@main.command("queues")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def queues(as_json: bool) -> None:
    """Ready and unacknowledged messages, and consumers, per queue."""
    settings = get_settings()
    stats, source = queue_stats(settings.broker_url, settings.rabbitmq_management_url)
    if as_json:
        click.echo(json.dumps({"source": source, "queues": [vars(s) for s in stats]}))
        return
    click.echo(f"{'QUEUE':<14} {'READY':>8} {'UNACKED':>8} {'CONSUMERS':>10}")
    for s in stats:
        click.echo(
            f"{s.name:<14} {_count(s.ready):>8} {_count(s.unacked):>8} {_count(s.consumers):>10}"
        )
    if source == "amqp":
        click.echo(
            "(unacked unknown: the RabbitMQ management API was not reachable; "
            "set SOUS_RABBITMQ_MANAGEMENT_URL)",
            err=True,
        )


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)
