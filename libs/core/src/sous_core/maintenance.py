"""Platform maintenance (retention purge, key expiry) as plain functions of ``now``.

The scheduler's maintenance tasks and ``sous maintenance run`` both call these. Each
takes the current time as an argument, is safe to run again, and logs what it changed.

Adding a task to ``TASKS`` (and so to ``sous maintenance``) is one decorator; the
first line of the function's docstring is what ``sous maintenance list`` shows::

    @register("reset-quotas")
    def _reset_quotas(now: datetime) -> QuotaReport:
        return reset_quotas(now)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from sous_core import quotas
from sous_core.celery_app import create_celery_app
from sous_core.db.engine import get_engine, session_scope
from sous_core.db.models import ApiKey, Job, Tenant
from sous_core.reaper import reap_stuck_jobs
from sous_core.settings import get_settings
from sous_core.states import TERMINAL_STATES, JobState
from sous_core.storage import job_dir, uploads_dir
from sous_core.tasks import JobKind

logger = logging.getLogger("sous.maintenance")

#: Tables the purge shrinks, vacuumed and analysed after it.
PURGED_TABLES = ("jobs", "webhook_deliveries", "schedule_runs")

#: Ids per ``IN (...)`` list, well under SQLite's limit on bound parameters.
_IN_CHUNK = 500

MaintenanceTask = Callable[[datetime], object]

#: Every task ``sous maintenance run`` knows, by name, in the order ``run`` with no names uses.
TASKS: dict[str, MaintenanceTask] = {}

_Task = TypeVar("_Task", bound=MaintenanceTask)


def register(name: str) -> Callable[[_Task], _Task]:
    """Add a task to ``TASKS``; the first line of its docstring is its description."""

    def decorate(task: _Task) -> _Task:
        if name in TASKS:
            raise ValueError(f"maintenance task {name!r} is already registered")
        TASKS[name] = task
        return task

    return decorate


def describe(name: str) -> str:
    """One-line description of a registered task (its docstring's first line)."""
    doc = TASKS[name].__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def jsonable(result: object) -> Any:
    """A task's result as JSON-ready data (dataclasses become dicts, datetimes ISO strings)."""
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return {f.name: jsonable(getattr(result, f.name)) for f in dataclasses.fields(result)}
    if isinstance(result, list | tuple):
        return [jsonable(item) for item in result]
    if isinstance(result, dict):
        return {str(key): jsonable(value) for key, value in result.items()}
    if isinstance(result, datetime):
        return result.isoformat()
    if isinstance(result, uuid.UUID | Path):
        return str(result)
    return result


# Retention purge


@dataclass(frozen=True)
class PurgeReport:
    """What one retention purge deleted."""

    #: Job rows deleted, batch children included.
    jobs_deleted: int = 0
    #: Job folders removed from storage, and the files that were in them.
    folders_removed: int = 0
    files_removed: int = 0
    #: Transactions that deleted something.
    batches: int = 0
    #: Whether ``VACUUM (ANALYZE)`` ran afterwards (set by the ``purge-jobs`` task).
    vacuumed: bool = False

    def __str__(self) -> str:
        return (
            f"deleted {self.jobs_deleted} job(s) in {self.batches} batch(es), "
            f"removed {self.folders_removed} folder(s) with {self.files_removed} file(s)"
            + ("; vacuumed" if self.vacuumed else "")
        )


def purge_old_jobs(
    now: datetime, *, retention_days: int, batch_size: int, storage_dir: Path
) -> PurgeReport:
    """Delete finished top-level jobs older than the retention, with their batch children.

    A job goes once it is succeeded, failed or cancelled and finished more than
    ``retention_days`` before ``now``; its children go with it (``ON DELETE CASCADE``).
    Each batch of at most ``batch_size`` rows (a parent and its children counted
    together) is its own short transaction, so the table is never locked for long and
    a crash loses at most one batch's work; concurrent purges skip each other's rows.
    Stored folders are removed only after their rows' deletion committed: a crash in
    between leaves a folder behind, never a job without its files.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    cutoff = now - timedelta(days=retention_days)
    deleted = folders = files = batches = 0
    while True:
        with session_scope() as session:
            doomed = _delete_batch(session, cutoff, batch_size)
        if not doomed:
            break
        batches += 1
        deleted += len(doomed)
        batch_folders = batch_files = 0
        for job_id in doomed:
            removed = _remove_job_dir(storage_dir, job_id)
            if removed is not None:
                batch_folders += 1
                batch_files += removed
        folders += batch_folders
        files += batch_files
        logger.info(
            "purge batch %d: deleted %d job(s) finished before %s, removed %d folder(s)",
            batches,
            len(doomed),
            cutoff.isoformat(),
            batch_folders,
        )
    report = PurgeReport(
        jobs_deleted=deleted, folders_removed=folders, files_removed=files, batches=batches
    )
    logger.info("retention purge (%d days): %s", retention_days, report)
    return report


def _delete_batch(session: Session, cutoff: datetime, batch_size: int) -> list[uuid.UUID]:
    """Delete one batch of expired jobs; the ids of every row deleted, children included."""
    candidates = list(
        session.execute(
            select(Job.id)
            .where(
                Job.parent_id.is_(None),
                Job.state.in_([state.value for state in TERMINAL_STATES]),
                Job.finished_at < cutoff,
            )
            .limit(batch_size)
            # Rows another purge holds are left to it. SQLite ignores the clause; its
            # writers are serialised anyway.
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    child_counts: dict[uuid.UUID, int] = {}
    for chunk in _chunks(candidates):
        for parent_id, count in session.execute(
            select(Job.parent_id, func.count())
            .where(Job.parent_id.in_(chunk))
            .group_by(Job.parent_id)
        ):
            if parent_id is not None:
                child_counts[parent_id] = count
    parents: list[uuid.UUID] = []
    rows = 0
    for job_id in candidates:
        size = 1 + child_counts.get(job_id, 0)
        # A batch with more children than batch_size still goes, alone in its batch.
        if parents and rows + size > batch_size:
            break
        parents.append(job_id)
        rows += size
    children: list[uuid.UUID] = []
    for chunk in _chunks([p for p in parents if p in child_counts]):
        children.extend(session.execute(select(Job.id).where(Job.parent_id.in_(chunk))).scalars())
    for chunk in _chunks(parents):
        session.execute(
            delete(Job).where(Job.id.in_(chunk)).execution_options(synchronize_session=False)
        )
    return parents + children


def _chunks(ids: Sequence[uuid.UUID]) -> Iterator[Sequence[uuid.UUID]]:
    for start in range(0, len(ids), _IN_CHUNK):
        yield ids[start : start + _IN_CHUNK]


def _remove_job_dir(storage_dir: Path, job_id: uuid.UUID) -> int | None:
    """Remove a job's folder; the number of files it held, or ``None`` if there was none."""
    folder = job_dir(storage_dir, job_id)
    if not folder.is_dir():
        return None
    count = sum(len(names) for _, _, names in os.walk(folder))
    try:
        shutil.rmtree(folder)
    except OSError as exc:
        logger.warning("could not remove %s of purged job %s: %s", folder, job_id, exc)
        return None
    return count


def vacuum_analyze() -> bool:
    """Reclaim space and refresh planner statistics after a purge; whether it ran.

    On PostgreSQL this is ``VACUUM (ANALYZE)`` of the purged tables, which needs an
    AUTOCOMMIT connection (it cannot run inside a transaction). On SQLite (the embedded
    mode) it is ``VACUUM`` and ``ANALYZE`` of the whole file, skipped if another
    process keeps the database busy.
    """
    engine = get_engine()
    dialect = engine.dialect.name
    if dialect == "postgresql":
        statements = [f"VACUUM (ANALYZE) {table}" for table in PURGED_TABLES]
    elif dialect == "sqlite":
        statements = ["VACUUM", "ANALYZE"]
    else:
        logger.info("VACUUM skipped: not supported on %s", dialect)
        return False
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            for statement in statements:
                connection.execute(text(statement))
    except OperationalError as exc:
        if dialect != "sqlite":
            raise
        logger.warning("VACUUM skipped: the SQLite database is busy (%s)", exc.orig)
        return False
    logger.info("vacuumed and analysed (%s)", dialect)
    return True


# API key expiry


@dataclass(frozen=True)
class RevokedKey:
    prefix: str
    tenant: str


@dataclass(frozen=True)
class ExpiringKey:
    prefix: str
    tenant: str
    expires_at: datetime


@dataclass(frozen=True)
class KeyExpiryReport:
    """Keys revoked because they expired, and keys that will expire soon."""

    revoked: list[RevokedKey]
    expiring_soon: list[ExpiringKey]

    def __str__(self) -> str:
        lines = [f"revoked {len(self.revoked)} expired key(s)"]
        lines += [f"  revoked {key.prefix} (tenant {key.tenant})" for key in self.revoked]
        lines.append(f"{len(self.expiring_soon)} key(s) expiring soon")
        lines += [
            f"  {key.prefix} (tenant {key.tenant}) expires {key.expires_at:%Y-%m-%d %H:%M} UTC"
            for key in self.expiring_soon
        ]
        return "\n".join(lines)


def expire_api_keys(now: datetime, *, warning_days: int) -> KeyExpiryReport:
    """Revoke keys past their ``expires_at``; report those expiring within ``warning_days``.

    Expired keys are already refused at authentication; revoking them makes
    ``sous keys list`` and audits say so for good. Revoked keys are never reported.
    """
    soon = now + timedelta(days=warning_days)
    with session_scope() as session:
        expired = session.execute(
            select(ApiKey, Tenant.name)
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(ApiKey.revoked_at.is_(None), ApiKey.expires_at <= now)
            .order_by(ApiKey.expires_at)
            .with_for_update(of=ApiKey, skip_locked=True)
        ).all()
        revoked = []
        for key, tenant in expired:
            key.revoked_at = now
            revoked.append(RevokedKey(prefix=key.prefix, tenant=tenant))
        expiring = [
            ExpiringKey(prefix=key.prefix, tenant=tenant, expires_at=key.expires_at)
            for key, tenant in session.execute(
                select(ApiKey, Tenant.name)
                .join(Tenant, Tenant.id == ApiKey.tenant_id)
                .where(
                    ApiKey.revoked_at.is_(None),
                    ApiKey.expires_at > now,
                    ApiKey.expires_at <= soon,
                )
                .order_by(ApiKey.expires_at)
            )
            if key.expires_at is not None
        ]
    for gone in revoked:
        logger.info("revoked expired API key %s of tenant %s", gone.prefix, gone.tenant)
    for warned in expiring:
        logger.warning(
            "API key %s of tenant %s expires on %s",
            warned.prefix,
            warned.tenant,
            warned.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
        )
    return KeyExpiryReport(revoked=revoked, expiring_soon=expiring)


# The registry


@register("purge-jobs")
def _purge_jobs(now: datetime) -> PurgeReport:
    """Delete finished jobs and their files past SOUS_RETENTION_DAYS, then VACUUM ANALYZE."""
    settings = get_settings()
    report = purge_old_jobs(
        now,
        retention_days=settings.retention_days,
        batch_size=settings.purge_batch_size,
        storage_dir=settings.storage_dir,
    )
    if not report.jobs_deleted:
        return report  # nothing deleted, nothing to reclaim
    return dataclasses.replace(report, vacuumed=vacuum_analyze())


@register("expire-keys")
def _expire_keys(now: datetime) -> KeyExpiryReport:
    """Revoke expired API keys; warn about keys expiring within SOUS_KEY_EXPIRY_WARNING_DAYS."""
    return expire_api_keys(now, warning_days=get_settings().key_expiry_warning_days)


@dataclass(frozen=True)
class QuotaResetReport:
    day: str
    usage_rows_pruned: int


@register("reset-quotas")
def _reset_quotas(now: datetime) -> QuotaResetReport:
    """Start today's quotas afresh: usage is counted per UTC day; old counters are dropped."""
    today = quotas.utc_day(now)
    with session_scope() as session:
        pruned = quotas.prune_usage(session, today)
    return QuotaResetReport(day=today.isoformat(), usage_rows_pruned=pruned)


@register("reap-stuck-jobs")
def _reap_stuck_jobs(now: datetime) -> object:
    """Re-queue once, then fail, running jobs whose worker stopped sending heartbeats."""
    app = create_celery_app("sous-maintenance", publisher_confirms=True)
    try:
        return reap_stuck_jobs(app, now, get_settings())
    finally:
        app.pool.force_close_all()


@dataclass(frozen=True)
class UploadSweepReport:
    removed: list[str]
    kept_in_use: int


def sweep_orphan_uploads(
    now: datetime, *, storage_dir: Path, older_than: timedelta
) -> UploadSweepReport:
    """Delete uploads no unfinished job needs, older than ``older_than`` (and stale partials).

    A transcode deletes its upload when it ends; what is left belongs to a job that was
    cancelled or purged before it ran, or to an API that died mid-upload.
    """
    folder = uploads_dir(storage_dir)
    if not folder.is_dir():
        return UploadSweepReport(removed=[], kept_in_use=0)
    unfinished = [state.value for state in JobState if state not in TERMINAL_STATES]
    with session_scope() as session:
        params = session.execute(
            select(Job.params).where(Job.kind == JobKind.TRANSCODE, Job.state.in_(unfinished))
        ).scalars()
        in_use = {
            str(source.get("upload"))
            for source in (p.get("source") or {} for p in params)
            if isinstance(source, dict) and source.get("upload")
        }
    cutoff = (now - older_than).timestamp()
    removed, kept = [], 0
    for path in folder.iterdir():
        if not path.is_file() or path.stat().st_mtime > cutoff:
            continue
        if path.name in in_use:
            kept += 1
            continue
        path.unlink(missing_ok=True)
        removed.append(path.name)
        logger.info("removed orphan upload %s", path.name)
    return UploadSweepReport(removed=removed, kept_in_use=kept)


@register("sweep-uploads")
def _sweep_uploads(now: datetime) -> UploadSweepReport:
    """Delete uploads older than a day that no unfinished transcode needs."""
    return sweep_orphan_uploads(
        now, storage_dir=get_settings().storage_dir, older_than=timedelta(hours=24)
    )
