"""The retention purge on PostgreSQL: batches, concurrency with SKIP LOCKED, VACUUM ANALYZE."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import func, insert, select

from sous_core import apikeys, maintenance
from sous_core.db.engine import session_scope
from sous_core.db.models import Job
from sous_core.storage import job_dir

pytestmark = pytest.mark.integration

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=45)
RECENT = NOW - timedelta(days=2)


def add_jobs(count: int, finished_at: datetime | None, state: str = "succeeded") -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(count)]
    with session_scope() as session:
        tenant, _ = apikeys.get_or_create_tenant(session, "acme")
        session.execute(
            insert(Job),
            [
                {
                    "id": job_id,
                    "tenant_id": tenant.id,
                    "kind": "fetch",
                    "params": {"url": "https://a.example/"},
                    "state": state,
                    "created_at": OLD - timedelta(minutes=5),
                    "updated_at": finished_at or OLD,
                    "finished_at": finished_at,
                }
                for job_id in ids
            ],
        )
    return ids


def job_count() -> int:
    with session_scope() as session:
        return session.execute(select(func.count()).select_from(Job)).scalar_one()


def test_purge_deletes_in_batches_keeps_newer_jobs_and_vacuums(
    process_database: str, tmp_path: Path
) -> None:
    old = add_jobs(2500, OLD)
    for job_id in old[:10]:
        job_dir(tmp_path, job_id).mkdir(parents=True)
        (job_dir(tmp_path, job_id) / "output").write_bytes(b"x")
    newer = add_jobs(40, RECENT)
    unfinished = add_jobs(5, None, state="running")

    report = maintenance.purge_old_jobs(
        NOW, retention_days=30, batch_size=1000, storage_dir=tmp_path
    )

    assert (report.jobs_deleted, report.batches) == (2500, 3)
    assert (report.folders_removed, report.files_removed) == (10, 10)
    with session_scope() as session:
        left = set(session.execute(select(Job.id)).scalars())
    assert left == set(newer) | set(unfinished)

    assert maintenance.vacuum_analyze() is True
    with psycopg.connect(process_database.replace("+psycopg", "")) as conn:
        row = conn.execute(
            "SELECT last_vacuum, last_analyze FROM pg_stat_user_tables WHERE relname = 'jobs'"
        ).fetchone()
    assert row is not None
    assert row[0] is not None
    assert row[1] is not None

    again = maintenance.purge_old_jobs(
        NOW, retention_days=30, batch_size=1000, storage_dir=tmp_path
    )
    assert again == maintenance.PurgeReport()


def test_a_purge_skips_rows_another_transaction_holds_instead_of_waiting(
    process_database: str, tmp_path: Path
) -> None:
    held, *others = add_jobs(30, OLD)
    with psycopg.connect(process_database.replace("+psycopg", "")) as other:
        other.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (held,))
        outcome: list[maintenance.PurgeReport] = []
        purge = threading.Thread(
            target=lambda: outcome.append(
                maintenance.purge_old_jobs(
                    NOW, retention_days=30, batch_size=7, storage_dir=tmp_path
                )
            )
        )
        purge.start()
        purge.join(timeout=30)
        assert not purge.is_alive(), "the purge waited for the locked row"
        assert outcome[0].jobs_deleted == len(others)
        assert job_count() == 1
    # Once the other transaction ends, the next run takes the row it skipped.
    report = maintenance.purge_old_jobs(NOW, retention_days=30, batch_size=7, storage_dir=tmp_path)
    assert report.jobs_deleted == 1
    assert job_count() == 0
