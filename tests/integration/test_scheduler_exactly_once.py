"""Two scheduler processes at once (a rollout, or a mistake): every tick fires exactly once."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest

import process_commands
from support.stack import Origin, make_stack, wait_until

pytestmark = pytest.mark.integration

RUN_SECONDS = 24
EVERY = 3


def test_two_schedulers_fire_every_tick_once(tmp_path: Path, origin: Origin) -> None:
    with make_stack(
        tmp_path,
        SOUS_REAPER_INTERVAL="2",
        SOUS_PENDING_SWEEP_INTERVAL="2",
        SOUS_SCHEDULE_POLL_INTERVAL="0.5",
    ) as stack:
        api = stack.start_api()
        stack.start_fast_worker()
        with api.client(stack.create_key("cron")) as client:
            created = client.post(
                "/v1/schedules",
                json={
                    "name": "every few seconds",
                    "cron": f"* * * * * */{EVERY}",
                    "timezone": "Europe/Paris",
                    "job": {"kind": "fetch", "url": f"{origin.url}/ok"},
                },
            )
            assert created.status_code == 201, created.text
            schedule = created.json()
            first = stack.start("scheduler-1", *process_commands.scheduler())
            second = stack.start("scheduler-2", *process_commands.scheduler())
            started = datetime.fromisoformat(schedule["created_at"])
            wait_until(
                lambda: len(runs(client, schedule["id"])) >= RUN_SECONDS // EVERY,
                RUN_SECONDS + 30,
                "the schedule to fire for a while",
                interval=1,
            )
            first.stop()
            second.stop()
            fired = runs(client, schedule["id"])
            jobs = client.get(
                "/v1/jobs", params={"schedule_id": schedule["id"], "limit": 200}
            ).json()["items"]

        # One run and one job per tick, ticks EVERY seconds apart with none missing.
        ticks = sorted(datetime.fromisoformat(run["tick"]) for run in fired)
        assert len(ticks) == len(set(ticks))
        assert all(b - a == timedelta(seconds=EVERY) for a, b in itertools.pairwise(ticks))
        assert ticks[0] >= started - timedelta(seconds=1)
        assert all(run["outcome"] == "submitted" for run in fired)
        assert sorted(run["job_id"] for run in fired) == sorted(job["id"] for job in jobs)
        assert all(job["schedule_id"] == schedule["id"] for job in jobs)

        # Both schedulers were live and both looked at the maintenance ticks; each tick of
        # each maintenance task was fired by exactly one of them.
        logs = first.log() + second.log()
        fired_ticks = Counter(re.findall(r"fired (\S+) for tick (\S+)", logs))
        assert fired_ticks, logs[-2000:]
        assert max(fired_ticks.values()) == 1
        assert "was fired by another scheduler" in logs
        claimed = claimed_ticks(stack.database_url())
        assert {(name, tick) for name, tick in fired_ticks} <= claimed


def runs(client, schedule_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return client.get(f"/v1/schedules/{schedule_id}/runs", params={"limit": 200}).json()["items"]


def claimed_ticks(database_url: str) -> set[tuple[str, str]]:
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT name, tick FROM maintenance_ticks").fetchall()
    return {(name, tick.isoformat()) for name, tick in rows}
