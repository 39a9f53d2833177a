"""Retention purge, key expiry and `sous maintenance`, on a migrated SQLite database."""

from __future__ import annotations

import json
import logging
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from sous_core import apikeys, maintenance
from sous_core.cli import main
from sous_core.db.engine import session_scope
from sous_core.db.models import ApiKey, Job, Schedule, ScheduleRun, WebhookDelivery
from sous_core.settings import get_settings
from sous_core.states import JobState
from sous_core.storage import job_dir, uploads_dir

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=31)
RECENT = NOW - timedelta(days=29)


@pytest.fixture
def storage_dir(configured_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "storage"
    monkeypatch.setenv("SOUS_STORAGE_DIR", str(path))
    get_settings.cache_clear()
    return path


@pytest.fixture
def tenant_id(configured_db: str) -> uuid.UUID:
    with session_scope() as session:
        tenant, _ = apikeys.get_or_create_tenant(session, "acme")
        return tenant.id


def add_job(
    tenant_id: uuid.UUID,
    state: JobState,
    finished_at: datetime | None,
    *,
    parent_id: uuid.UUID | None = None,
    storage_dir: Path | None = None,
) -> uuid.UUID:
    created = (finished_at or OLD) - timedelta(minutes=5)
    with session_scope() as session:
        job = Job(
            tenant_id=tenant_id,
            kind="fetch",
            params={"url": "https://a.example/"},
            state=state.value,
            created_at=created,
            updated_at=finished_at or created,
            finished_at=finished_at,
            parent_id=parent_id,
        )
        session.add(job)
        session.flush()
        job_id = job.id
    if storage_dir is not None:
        folder = job_dir(storage_dir, job_id)
        folder.mkdir(parents=True)
        (folder / "output").write_bytes(b"bytes")
    return job_id


def surviving(ids: list[uuid.UUID]) -> set[uuid.UUID]:
    with session_scope() as session:
        return set(session.execute(select(Job.id).where(Job.id.in_(ids))).scalars())


def purge(storage_dir: Path, batch_size: int = 1000) -> maintenance.PurgeReport:
    return maintenance.purge_old_jobs(
        NOW, retention_days=30, batch_size=batch_size, storage_dir=storage_dir
    )


def test_purge_deletes_old_finished_jobs_and_their_folders_and_keeps_the_rest(
    tenant_id: uuid.UUID, storage_dir: Path
) -> None:
    old = [
        add_job(tenant_id, state, OLD, storage_dir=storage_dir)
        for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
    ]
    kept = [
        add_job(tenant_id, JobState.SUCCEEDED, RECENT, storage_dir=storage_dir),
        add_job(tenant_id, JobState.FAILED, NOW - timedelta(days=30)),  # exactly at the cutoff
        *(add_job(tenant_id, state, None) for state in JobState if not state.is_terminal),
    ]
    # An old finished child of a batch still running stays with its batch.
    running_batch = add_job(tenant_id, JobState.RUNNING, None)
    kept += [running_batch, add_job(tenant_id, JobState.SUCCEEDED, OLD, parent_id=running_batch)]
    with session_scope() as session:
        schedule = Schedule(tenant_id=tenant_id, cron="* * * * *", job={"kind": "fetch"})
        session.add(schedule)
        session.flush()
        session.add(ScheduleRun(schedule_id=schedule.id, tick=OLD, job_id=old[0]))
        session.add(WebhookDelivery(job_id=old[0], tenant_id=tenant_id, url="https://h.example/"))

    report = purge(storage_dir)

    assert (report.jobs_deleted, report.folders_removed, report.files_removed) == (3, 3, 3)
    assert report.batches == 1
    assert surviving(old + kept) == set(kept)
    assert not any(job_dir(storage_dir, job_id).exists() for job_id in old)
    assert job_dir(storage_dir, kept[0]).is_dir()
    with session_scope() as session:
        assert session.execute(select(func.count()).select_from(WebhookDelivery)).scalar() == 0
        assert session.execute(select(ScheduleRun.job_id)).scalar_one() is None


def test_a_batch_goes_with_its_children_and_their_folders(
    tenant_id: uuid.UUID, storage_dir: Path
) -> None:
    parent = add_job(tenant_id, JobState.SUCCEEDED, OLD, storage_dir=storage_dir)
    children = [
        add_job(tenant_id, JobState.SUCCEEDED, OLD, parent_id=parent, storage_dir=storage_dir)
        for _ in range(4)
    ]

    report = purge(storage_dir)

    assert (report.jobs_deleted, report.folders_removed, report.batches) == (5, 5, 1)
    assert surviving([parent, *children]) == set()
    assert not any(job_dir(storage_dir, job_id).exists() for job_id in [parent, *children])


def test_purge_works_through_more_jobs_than_one_batch_and_a_second_run_deletes_nothing(
    tenant_id: uuid.UUID, storage_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = [add_job(tenant_id, JobState.SUCCEEDED, OLD) for _ in range(7)]
    newer = add_job(tenant_id, JobState.SUCCEEDED, RECENT)

    with caplog.at_level(logging.INFO, logger="sous.maintenance"):
        report = purge(storage_dir, batch_size=3)

    assert (report.jobs_deleted, report.batches) == (7, 3)
    assert surviving([*old, newer]) == {newer}
    assert [r.message for r in caplog.records if "purge batch" in r.message][-1].startswith(
        "purge batch 3: deleted 1 job(s)"
    )
    assert purge(storage_dir, batch_size=3) == maintenance.PurgeReport()
    assert surviving([newer]) == {newer}


def test_a_batch_counts_its_children_against_the_batch_size(
    tenant_id: uuid.UUID, storage_dir: Path
) -> None:
    big = add_job(tenant_id, JobState.SUCCEEDED, OLD)
    for _ in range(4):
        add_job(tenant_id, JobState.SUCCEEDED, OLD, parent_id=big)
    singles = [add_job(tenant_id, JobState.FAILED, OLD) for _ in range(3)]

    report = purge(storage_dir, batch_size=3)

    # The 5-row batch goes alone (it cannot be split); the 3 single jobs fit in one more.
    assert (report.jobs_deleted, report.batches) == (8, 2)
    assert surviving([big, *singles]) == set()


def test_vacuum_runs_on_sqlite(configured_db: str) -> None:
    assert maintenance.vacuum_analyze() is True


def add_key(
    tenant_name: str, expires_at: datetime | None, revoked_at: datetime | None = None
) -> str:
    with session_scope() as session:
        tenant, _ = apikeys.get_or_create_tenant(session, tenant_name)
        issued = apikeys.create_key(session, tenant, expires_at=expires_at)
        issued.key.revoked_at = revoked_at
        return issued.key.prefix


def revoked_at_by_prefix() -> dict[str, datetime | None]:
    with session_scope() as session:
        return dict(session.execute(select(ApiKey.prefix, ApiKey.revoked_at)).all())


def test_expired_keys_are_revoked_and_keys_expiring_soon_reported(
    configured_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    expired = add_key("acme", NOW - timedelta(hours=1))
    expired_now = add_key("globex", NOW)
    earlier = NOW - timedelta(days=3)
    already_revoked = add_key("acme", NOW - timedelta(days=2), revoked_at=earlier)
    soon = add_key("globex", NOW + timedelta(days=3))
    later = add_key("acme", NOW + timedelta(days=15))
    never = add_key("acme", None)

    with caplog.at_level(logging.INFO, logger="sous.maintenance"):
        report = maintenance.expire_api_keys(NOW, warning_days=14)

    assert report.revoked == [
        maintenance.RevokedKey(prefix=expired, tenant="acme"),
        maintenance.RevokedKey(prefix=expired_now, tenant="globex"),
    ]
    assert report.expiring_soon == [
        maintenance.ExpiringKey(prefix=soon, tenant="globex", expires_at=NOW + timedelta(days=3))
    ]
    assert revoked_at_by_prefix() == {
        expired: NOW,
        expired_now: NOW,
        already_revoked: earlier,
        soon: None,
        later: None,
        never: None,
    }
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"API key {soon} of tenant globex expires on 2025-06-04 12:00 UTC"]

    again = maintenance.expire_api_keys(NOW + timedelta(minutes=1), warning_days=14)
    assert again.revoked == []
    assert again.expiring_soon == report.expiring_soon
    assert revoked_at_by_prefix()[expired] == NOW


def test_registering_a_task_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        maintenance.register("purge-jobs")(lambda now: None)


def test_cli_lists_the_tasks_with_descriptions() -> None:
    result = CliRunner().invoke(main, ["maintenance", "list"])
    assert result.exit_code == 0, result.output
    lines = dict(line.split(None, 1) for line in result.output.splitlines())
    assert set(lines) >= {"purge-jobs", "expire-keys"}
    assert "SOUS_RETENTION_DAYS" in lines["purge-jobs"]


def test_cli_runs_a_task_and_prints_json(configured_db: str) -> None:
    expired = add_key("acme", datetime.now(UTC) - timedelta(days=1))
    soon = add_key("acme", datetime.now(UTC) + timedelta(days=2))

    result = CliRunner().invoke(main, ["maintenance", "run", "expire-keys", "--json"])

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert list(document) == ["expire-keys"]
    assert document["expire-keys"]["revoked"] == [{"prefix": expired, "tenant": "acme"}]
    [warned] = document["expire-keys"]["expiring_soon"]
    assert (warned["prefix"], warned["tenant"]) == (soon, "acme")
    assert datetime.fromisoformat(warned["expires_at"]) > datetime.now(UTC)


def test_cli_runs_every_task_by_default(
    tenant_id: uuid.UUID, storage_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = add_job(
        tenant_id,
        JobState.SUCCEEDED,
        datetime.now(UTC) - timedelta(days=40),
        storage_dir=storage_dir,
    )
    ran: list[datetime] = []
    monkeypatch.setitem(maintenance.TASKS, "note-the-time", ran.append)

    result = CliRunner().invoke(main, ["maintenance", "run"])

    assert result.exit_code == 0, result.output
    assert "purge-jobs: deleted 1 job(s) in 1 batch(es), removed 1 folder(s)" in result.output
    assert "; vacuumed" in result.output
    assert "expire-keys: revoked 0 expired key(s)" in result.output
    assert len(ran) == 1
    assert surviving([old]) == set()
    assert not job_dir(storage_dir, old).exists()


def test_cli_refuses_an_unknown_task_and_names_the_valid_ones(configured_db: str) -> None:
    result = CliRunner().invoke(main, ["maintenance", "run", "expire-keys", "reticulate"])
    assert result.exit_code == 2
    assert "unknown task 'reticulate'" in result.output
    assert f"valid tasks: {', '.join(maintenance.TASKS)}" in result.output


@pytest.mark.parametrize(
    "command", [["maintenance"], ["maintenance", "run"], ["maintenance", "list"]]
)
def test_cli_help(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


def add_transcode(tenant_id: uuid.UUID, state: JobState, upload: str) -> None:
    with session_scope() as session:
        session.add(
            Job(
                tenant_id=tenant_id,
                kind="transcode",
                params={
                    "source": {"upload": upload, "filename": "a.mp4", "size_bytes": 1},
                    "options": {"preset": "audio-aac"},
                },
                state=state.value,
            )
        )


def test_orphan_uploads_are_swept_and_uploads_in_use_kept(
    tenant_id: uuid.UUID, storage_dir: Path
) -> None:
    folder = uploads_dir(storage_dir)
    folder.mkdir(parents=True)
    names = {name: uuid.uuid4().hex for name in ("queued", "finished", "unknown", "fresh")}
    for upload in names.values():
        (folder / upload).write_bytes(b"video")
    (folder / ".abc.partial").write_bytes(b"half")
    add_transcode(tenant_id, JobState.QUEUED, names["queued"])
    add_transcode(tenant_id, JobState.CANCELLED, names["finished"])
    now = datetime.now(UTC) + timedelta(hours=25)
    fresh = (folder / names["fresh"]).stat()
    # "fresh" was written just before the sweep looked: younger than the cutoff.
    os.utime(folder / names["fresh"], (fresh.st_atime, now.timestamp() - 60))

    report = maintenance.sweep_orphan_uploads(
        now, storage_dir=storage_dir, older_than=timedelta(hours=24)
    )

    assert sorted(report.removed) == sorted([names["finished"], names["unknown"], ".abc.partial"])
    assert report.kept_in_use == 1
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        [names["queued"], names["fresh"]]
    )
    again = maintenance.sweep_orphan_uploads(
        now, storage_dir=storage_dir, older_than=timedelta(hours=24)
    )
    assert again.removed == []
