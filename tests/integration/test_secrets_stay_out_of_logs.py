"""No secret reaches a log line, a job record, an error body or a metric.

One installation runs with real secrets: a RabbitMQ user of its own with a random
password, an SMTP server that requires AUTH with a random password, and a tenant API key.
Jobs that use them succeed and fail, clients send the key wrongly and in odd places,
and then every line every process wrote (logs at DEBUG, and its trace spans), every
response the API gave, every metric page and `sous queues` are searched for each secret.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import process_commands
from sous_core.apikeys import split_token
from support.sinks import SmtpSink
from support.stack import TERMINAL, Origin, Stack, free_port, make_stack, wait_for_job

pytestmark = pytest.mark.integration

MANAGEMENT_API = "http://127.0.0.1:15672/api"
MANAGEMENT_AUTH = ("guest", "guest")


@dataclass(frozen=True)
class BrokerUser:
    name: str
    password: str


@contextlib.contextmanager
def broker_user(vhost: str) -> Iterator[BrokerUser]:
    """A RabbitMQ user with a random password, allowed on ``vhost`` only; deleted after.

    Made through the management API, so the password is on no command line.
    """
    user = BrokerUser(f"sous_it_{secrets.token_hex(4)}", secrets.token_hex(16))
    with httpx.Client(base_url=MANAGEMENT_API, auth=MANAGEMENT_AUTH, timeout=10) as admin:
        # ``management``: `sous queues` and the scheduler read queue depth with this user too.
        admin.put(
            f"/users/{user.name}", json={"password": user.password, "tags": "management"}
        ).raise_for_status()
        try:
            admin.put(
                f"/permissions/{vhost}/{user.name}",
                json={"configure": ".*", "write": ".*", "read": ".*"},
            ).raise_for_status()
            yield user
        finally:
            admin.delete(f"/users/{user.name}").raise_for_status()


class Responses:
    """Every response a client got, as text (status, headers, body), kept as it arrives.

    Not the request: a client's own URL holds the key when the test puts it there.
    """

    def __init__(self) -> None:
        self.seen: list[str] = []

    def keep(self, response: httpx.Response) -> None:
        response.read()
        headers = "\n".join(f"{name}: {value}" for name, value in response.headers.items())
        self.seen.append(f"{response.status_code}\n{headers}\n{response.text}")

    def client(self, base_url: str, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=10,
            event_hooks={"response": [self.keep]},
        )


def leaks(sources: dict[str, str], secret_values: dict[str, str]) -> list[str]:
    """``where: line`` for each line of a source holding a secret, the secret named, not shown."""
    found = []
    for where, text in sources.items():
        for number, line in enumerate(text.splitlines(), 1):
            hits = [name for name, value in secret_values.items() if value in line]
            if hits:
                shown = line
                for name, value in secret_values.items():
                    shown = shown.replace(value, f"<{name}>")
                found.append(f"{where}:{number}: {', '.join(hits)}: {shown[:300]}")
    return found


def test_no_secret_appears_in_logs_job_records_or_errors(tmp_path: Path) -> None:
    smtp_user, smtp_password = "sous-mailer", secrets.token_hex(16)
    sink = SmtpSink(credentials=(smtp_user, smtp_password))
    origin = Origin()
    responses = Responses()
    try:
        with (
            make_stack(
                tmp_path,
                SOUS_SMTP_PORT=str(sink.port),
                SOUS_SMTP_USERNAME=smtp_user,
                SOUS_SMTP_PASSWORD=smtp_password,
                SOUS_MAX_RETRIES="0",
                # DEBUG: whatever a process logs at any level must be clean too.
                SOUS_LOG_LEVEL="DEBUG",
                # Spans on stdout, scanned with the logs: what a trace collector would get.
                OTEL_TRACES_EXPORTER="console",
                OTEL_BSP_SCHEDULE_DELAY="200",
            ) as stack,
            broker_user(stack.name) as broker,
        ):
            _use_broker_user(stack, broker)
            key = stack.create_key("secretive")
            parts = split_token(key)
            assert parts is not None
            prefix, key_secret = parts
            rejected_keys = [f"sous_{prefix}_{secrets.token_urlsafe(32)}", f"{key}x"]

            api_url, scheduler_metrics = _start_everything(stack)
            with responses.client(api_url, key) as client:
                job_ids = _run_jobs(client, origin, sink)
                _send_the_key_wrongly(responses, api_url, key, rejected_keys)
                _read_back(client, job_ids)
            responses.keep(httpx.get(scheduler_metrics, timeout=10))
            responses.keep(httpx.get(f"{api_url}/metrics", timeout=10))
            queues = stack.run("sous", "queues")
            queues_json = stack.run("sous", "queues", "--json")
            assert '"source": "management"' in queues_json.stdout, queues_json.stdout

            # The secrets were really used: a clean scan of unused secrets would prove nothing.
            assert smtp_user in sink.logins
            assert _scraped(responses, "sous_queue_stats_up 1.0"), "the scheduler read no stats"

            for proc in stack.processes:
                assert proc.popen.poll() is None, f"{proc.label} died:\n{proc.log()}"
                proc.stop()
            logs = {proc.label: proc.log() for proc in stack.processes}
            masked_broker_url = f"amqp://{broker.name}:**@127.0.0.1:5672/{stack.name}"
            for label in ("worker-fast", "worker-heavy", "scheduler"):
                # Celery's banner shows the broker URL, its password masked.
                assert masked_broker_url in logs[label], logs[label]

            sources = {
                **{f"log of {label}": text for label, text in logs.items()},
                **{f"response {n}": text for n, text in enumerate(responses.seen, 1)},
                "sous queues": queues.stdout + queues.stderr,
                "sous queues --json": queues_json.stdout + queues_json.stderr,
            }
            secret_values = {
                "API key": key,
                "API key secret": key_secret,
                "SMTP password": smtp_password,
                "broker password": broker.password,
                **{f"rejected API key {n}": k for n, k in enumerate(rejected_keys, 1)},
            }
            found = leaks(sources, secret_values)
            assert not found, "secrets leaked:\n" + "\n".join(found)
    finally:
        origin.close()
        sink.close()


def _use_broker_user(stack: Stack, broker: BrokerUser) -> None:
    """Point every process at the stack's vhost as ``broker`` instead of guest."""
    stack.env["SOUS_BROKER_URL"] = (
        f"amqp://{broker.name}:{broker.password}@127.0.0.1:5672/{stack.name}"
    )
    stack.env["SOUS_RABBITMQ_MANAGEMENT_URL"] = (
        f"http://{broker.name}:{broker.password}@127.0.0.1:15672"
    )


def _start_everything(stack: Stack) -> tuple[str, str]:
    """Fast and heavy workers, the scheduler and the API: the API's URL and the scheduler's
    ``/metrics`` (it reads queue depth from the management API, with the broker password)."""
    stack.start_fast_worker()
    stack.start_heavy_worker(concurrency=1)
    metrics_port = free_port()
    beat = stack.start(
        "scheduler",
        *process_commands.scheduler(),
        env={**stack.env, "SOUS_METRICS_PORT": str(metrics_port)},
    )
    beat.wait_for_log(r"beat: Starting", 60)
    return stack.start_api().url, f"http://127.0.0.1:{metrics_port}/metrics"


def _run_jobs(client: httpx.Client, origin: Origin, sink: SmtpSink) -> list[str]:
    """A sent email, one refused at login, a good fetch, two failed ones; their ids."""
    sent = _submit(client, "/v1/emails", {"to": ["ada@example.com"], "subject": "s", "text": "t"})
    job = wait_for_job(client, sent, TERMINAL, timeout=60)
    assert job["state"] == "succeeded", job
    assert sink.to("ada@example.com")

    # The server's password changes: the worker's one is refused at login.
    assert sink.credentials is not None
    kept = sink.credentials
    sink.credentials = (kept[0], secrets.token_hex(16))
    try:
        refused = _submit(
            client, "/v1/emails", {"to": ["bob@example.com"], "subject": "s", "text": "t"}
        )
        job = wait_for_job(client, refused, TERMINAL, timeout=60)
    finally:
        sink.credentials = kept
    assert job["state"] == "failed", job
    assert job["error"]["code"] == "smtp_auth_failed", job

    fetched = _submit(client, "/v1/fetches", {"url": f"{origin.url}/ok"})
    missing = _submit(client, "/v1/fetches", {"url": f"{origin.url}/status/404"})
    blocked = _submit(client, "/v1/fetches", {"url": "http://169.254.169.254/latest/meta-data/"})
    outcomes = {
        job_id: wait_for_job(client, job_id, TERMINAL, timeout=60)["state"]
        for job_id in (fetched, missing, blocked)
    }
    assert outcomes == {fetched: "succeeded", missing: "failed", blocked: "failed"}
    return [sent, refused, fetched, missing, blocked]


def _submit(client: httpx.Client, path: str, body: dict[str, object]) -> str:
    response = client.post(path, json=body)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _send_the_key_wrongly(
    responses: Responses, api_url: str, key: str, rejected_keys: list[str]
) -> None:
    """Wrong keys, the key in the wrong header or scheme, in a query string, in a body."""
    fetch = {"url": "http://127.0.0.1:9/"}
    with responses.client(api_url) as anonymous:
        for wrong in rejected_keys:
            bad = anonymous.get("/v1/jobs", headers={"Authorization": f"Bearer {wrong}"})
            assert bad.status_code == 401, bad.text
        for headers in (
            {"Authorization": f"Token {key}"},
            {"Authorization": key},
            {"X-API-Key": key},
        ):
            assert anonymous.get("/v1/jobs", headers=headers).status_code == 401
        for params in ({"api_key": key}, {"access_token": key}):
            assert anonymous.post("/v1/fetches", params=params, json=fetch).status_code == 401
        unauthenticated = anonymous.post("/v1/fetches", json={**fetch, "api_key": key})
        assert unauthenticated.status_code == 401
    with responses.client(api_url, key) as client:
        # Sent with the key where it belongs as well: the stray copy is ignored or refused.
        assert client.get("/v1/jobs", params={"api_key": key}).status_code == 200
        assert client.get(f"/v1/jobs/{key}").status_code == 422
        extra_field = client.post("/v1/fetches", json={**fetch, "api_key": key})
        assert extra_field.status_code == 422, extra_field.text
        not_a_url = client.post("/v1/fetches", json={"url": key})
        assert not_a_url.status_code == 422, not_a_url.text


def _read_back(client: httpx.Client, job_ids: list[str]) -> None:
    """Each job, its events, and every page of the job list."""
    for job_id in job_ids:
        assert client.get(f"/v1/jobs/{job_id}").status_code == 200
        assert client.get(f"/v1/jobs/{job_id}/events").status_code == 200
    cursor: str | None = None
    listed: list[str] = []
    for _ in range(len(job_ids) + 1):
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params).json()
        listed += [job["id"] for job in page["items"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert set(job_ids) <= set(listed)


def _scraped(responses: Responses, sample: str) -> bool:
    return any(re.search(rf"^{re.escape(sample)}$", text, re.M) for text in responses.seen)
