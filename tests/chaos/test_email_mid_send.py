"""A broker restart in the middle of slow SMTP sends: every email arrives exactly once.

Celery cancels a gevent worker's running tasks when its broker connection drops, and
RabbitMQ redelivers their messages when it is back. Here every send outlasts the
restart (the SMTP sink answers DATA 25 s after it arrived), so the redelivered messages
reach workers while the first attempts are still waiting on the SMTP server: they must
wait for those attempts rather than send again. Also covered: the worker process keeps
running its other greenlets while it waits to reconnect (a blocking wait there used to
stop the "sent" record from being written before the redelivery).
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest

from chaos.harness import FAST_WORKERS, Chaos, ChaosConfig
from chaos.private_services import PrivateServices

# About 80 s: run by `make chaos` (the short fault suite in `make test` restarts RabbitMQ
# under a mixed load whose emails include slow ones, but not with sends this long).
pytestmark = [pytest.mark.integration, pytest.mark.long_fault]

EMAILS = 12
#: Longer than the private RabbitMQ takes to stop and start again (~15-20 s here).
SEND_SECONDS = 25.0


@pytest.mark.timeout(400)
def test_emails_in_flight_across_a_broker_restart_are_sent_once(tmp_path: Path) -> None:
    with PrivateServices.start() as services:
        chaos = Chaos(ChaosConfig(seed=1), tmp_path, services)
        chaos.smtp.slow_seconds = SEND_SECONDS
        try:
            chaos.stack.run("sous", "db", "upgrade")
            chaos.api = chaos.stack.start_api()
            for role in FAST_WORKERS:
                chaos.start_role(role, wait=False)
            for role in FAST_WORKERS:
                chaos.wait_ready(role)
            key = chaos.stack.create_key("mid-send")
            with chaos.api.client(key) as client:
                ids = []
                for n in range(EMAILS):
                    response = client.post(
                        "/v1/emails",
                        json={"to": [f"slow-{n}@example.com"], "subject": f"n{n}", "text": "hi"},
                    )
                    assert response.status_code == 202, response.text
                    ids.append(response.json()["id"])

            def sending() -> int:
                return chaos.query(
                    "SELECT count(*) FROM jobs WHERE state = 'running' AND kind = 'email'"
                )[0][0]

            deadline = time.monotonic() + 30
            while sending() < EMAILS and time.monotonic() < deadline:
                time.sleep(0.2)
            assert sending() == EMAILS, "every email is being sent before the restart"
            restarted = time.monotonic()
            services.rabbitmq.restart(down_seconds=2)
            assert time.monotonic() - restarted < SEND_SECONDS, "the sends outlast the restart"

            chaos.settle()
            rows = chaos.query("SELECT id, state, error_code FROM jobs")
            deliveries = collections.Counter(
                str(message.message["X-Sous-Job-Id"]) for message in chaos.smtp.messages
            )
            logs = "".join(proc.log() for proc in chaos.stack.processes)
        finally:
            chaos.close()

    assert sorted(str(r[0]) for r in rows) == sorted(ids)
    assert {(r[1], r[2]) for r in rows} == {("succeeded", None)}, rows
    assert {job_id: deliveries[job_id] for job_id in ids} == dict.fromkeys(ids, 1)
    # The redelivered messages waited for the live attempts (rather than racing them).
    assert "cancelled mid-send" in logs
    assert "running in another attempt" in logs
