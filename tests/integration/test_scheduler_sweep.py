"""The scheduler's sweep publishes jobs the API wrote but never queued."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

import process_commands
from sous_core import apikeys
from sous_core.db.engine import make_engine
from sous_core.db.models import Job
from support.stack import OK_SHA256, Origin, make_stack, wait_for_job

pytestmark = pytest.mark.integration


def test_stale_pending_job_is_published_by_the_sweep_and_runs(
    tmp_path: Path, origin: Origin
) -> None:
    overrides = {"SOUS_PENDING_SWEEP_INTERVAL": "1", "SOUS_PENDING_REQUEUE_AFTER": "30"}
    with make_stack(tmp_path, **overrides) as own:
        # What an API that died between its commit and its publish leaves behind.
        engine = make_engine(own.database_url())
        with Session(engine) as session, session.begin():
            tenant, _ = apikeys.get_or_create_tenant(session, "sweep")
            stranded, recent = (
                Job(
                    tenant_id=tenant.id,
                    kind="fetch",
                    params={"url": f"{origin.url}/ok"},
                    created_at=datetime.now(UTC) - age,
                )
                for age in (timedelta(minutes=5), timedelta(seconds=0))
            )
            session.add_all([stranded, recent])
            session.flush()
            stranded_id, recent_id = str(stranded.id), str(recent.id)
        engine.dispose()
        key = own.create_key("sweep")
        own.start_fast_worker()
        own.start("scheduler", *process_commands.scheduler())
        api = own.start_api()

        with api.client(key) as client:
            done = wait_for_job(client, stranded_id, {"succeeded", "failed"}, timeout=60)
            assert done["state"] == "succeeded"
            assert done["result"]["sha256"] == OK_SHA256
            assert done["queued_at"] is not None
            # Younger than SOUS_PENDING_REQUEUE_AFTER: its submit may still be under way.
            assert client.get(f"/v1/jobs/{recent_id}").json()["state"] == "pending"
