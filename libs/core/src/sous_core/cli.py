"""``sous``: the operator command line (tenants, keys, webhook secrets, migrations, queues,
dead letters)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from sous_core import apikeys, dead_letter_admin, maintenance, quotas
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


@tenants.command("set-quota")
@click.option("--tenant", required=True, help="Tenant name.")
@click.option(
    "--metric",
    required=True,
    type=click.Choice(quotas.METRICS),
    help="What to limit: jobs of a kind (a batch fetch counts one per URL), or minutes "
    "of transcoded input.",
)
@click.option(
    "--daily-limit",
    type=click.IntRange(min=0),
    help="Most units per UTC day (0 refuses every job of the metric).",
)
@click.option("--unlimited", is_flag=True, help="Remove the limit.")
def tenants_set_quota(tenant: str, metric: str, daily_limit: int | None, unlimited: bool) -> None:
    """Limit what a tenant may use per UTC day; takes effect at once.

    Usage counts from 00:00 UTC; a job over the limit is refused with 429 and a
    Retry-After of the seconds until the next UTC midnight. Example:

    \b
        sous tenants set-quota --tenant acme --metric jobs:fetch --daily-limit 1000
    """
    if (daily_limit is None) != unlimited:
        raise click.UsageError("give either --daily-limit N or --unlimited")
    with session_scope() as session:
        quotas.set_quota(session, _tenant(session, tenant).id, metric, daily_limit)
    limit = "unlimited" if daily_limit is None else f"{daily_limit} per UTC day"
    click.echo(f"tenant {tenant}: {metric} {limit}")


@tenants.command("quotas")
@click.option("--tenant", required=True, help="Tenant name.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def tenants_quotas(tenant: str, as_json: bool) -> None:
    """Each metric's daily limit and what the tenant used of it today (UTC)."""
    now = datetime.now(UTC)
    with session_scope() as session:
        statuses = quotas.quotas_of(session, _tenant(session, tenant).id, now)
    resets_at = quotas.next_reset(now).isoformat()
    if as_json:
        rows = [status._asdict() for status in statuses]
        click.echo(json.dumps({"tenant": tenant, "resets_at": resets_at, "quotas": rows}))
        return
    click.echo(f"{'METRIC':<26} {'DAILY LIMIT':>12} {'USED TODAY':>12}")
    for status in statuses:
        limit = "unlimited" if status.daily_limit is None else str(status.daily_limit)
        click.echo(f"{status.metric:<26} {limit:>12} {status.used:>12}")
    click.echo(f"usage resets at {resets_at}", err=True)


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


@main.group()
def dlq() -> None:
    """Dead letters: task messages RabbitMQ gave up on after SOUS_MAX_DELIVERIES deliveries
    (each killed its worker). Their jobs are already failed with code worker_lost."""


@dlq.command("list")
@click.option(
    "--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Show at most N."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def dlq_list(limit: int, as_json: bool) -> None:
    """Show dead letters, oldest first, without consuming them (each is put back in place)."""
    settings = get_settings()
    letters = dead_letter_admin.list_dead_letters(
        settings.broker_url, limit, settings.max_deliveries
    )
    if as_json:
        click.echo(json.dumps({"dead_letters": [letter.as_json() for letter in letters]}))
        return
    click.echo(
        f"{'JOB ID':<36}  {'TASK':<20} {'QUEUE':<12} {'REASON':<16} {'DELIVERIES':>10}  DIED AT"
    )
    for letter in letters:
        died = letter.died_at.strftime("%Y-%m-%d %H:%M:%S") if letter.died_at else "-"
        click.echo(
            f"{letter.job_id or '-'!s:<36}  {letter.task or '-':<20} {letter.queue:<12} "
            f"{letter.reason:<16} {_count(letter.deliveries):>10}  {died}"
        )


@dlq.command("replay")
@click.argument("job_ids", nargs=-1, type=click.UUID, metavar="[JOB_ID]...")
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
def dlq_replay(job_ids: tuple[uuid.UUID, ...], replay_all: bool) -> None:
    """Run dead-lettered jobs again: each failed job goes back to queued (its attempts kept)
    and its message back to the queue it came from, then leaves the dead-letter queue.

    Fix what killed the workers first, or the job dies again and comes back here.
    Exits 1 if any dead letter was left in place or a JOB_ID has none. Example:

    \b
        sous dlq replay 0b7e1c2a-6f7d-4c1e-9a55-3f1d2e4b5c6d
    """
    if bool(job_ids) == replay_all:
        raise click.UsageError("give JOB_IDs or --all")
    settings = get_settings()
    report = dead_letter_admin.replay(
        settings.broker_url, None if replay_all else job_ids, settings.max_deliveries
    )
    for letter in report.replayed:
        click.echo(f"replayed {letter.job_id or letter.task} to {letter.queue}")
    for letter, reason in report.skipped:
        click.echo(f"left {letter.job_id or letter.task} in the dead-letter queue: {reason}")
    for job_id in report.not_found:
        click.echo(f"no dead letter for job {job_id}")
    if report.skipped or report.not_found:
        raise SystemExit(1)


@dlq.command("purge")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(yes: bool) -> None:
    """Delete every dead letter for good (their jobs stay failed)."""
    if not yes:
        click.confirm("Delete every message in the dead-letter queue?", abort=True)
    purged = dead_letter_admin.purge(get_settings().broker_url)
    click.echo(f"purged {purged} dead letter(s)")


@main.group("maintenance")
def maintenance_group() -> None:
    """Platform maintenance the scheduler runs on its own (retention purge, key expiry)."""


@maintenance_group.command("list")
def maintenance_list() -> None:
    """Print the maintenance tasks `sous maintenance run` knows, with what each does."""
    width = max(map(len, maintenance.TASKS), default=0)
    for name in maintenance.TASKS:
        click.echo(f"{name:<{width}}  {maintenance.describe(name)}")


@maintenance_group.command("run")
@click.argument("task_names", nargs=-1, metavar="[TASK]...")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, by task name.")
def maintenance_run(task_names: tuple[str, ...], as_json: bool) -> None:
    """Run TASKs now, in this process (default: every task); print what each changed.

    Safe to repeat: a second run finds nothing left to do. See `sous maintenance list`.
    """
    unknown = [name for name in task_names if name not in maintenance.TASKS]
    if unknown:
        raise click.BadParameter(
            f"unknown task {', '.join(map(repr, unknown))}; "
            f"valid tasks: {', '.join(maintenance.TASKS)}",
            param_hint="TASK",
        )
    now = datetime.now(UTC)
    results: dict[str, object] = {}
    for name in dict.fromkeys(task_names or maintenance.TASKS):
        results[name] = result = maintenance.TASKS[name](now)
        if not as_json:
            click.echo(f"{name}: {result}")
    if as_json:
        click.echo(json.dumps(maintenance.jsonable(results)))
