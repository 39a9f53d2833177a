"""Webhooks: a finished job is POSTed, signed, to its callback_url; failures are retried."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from sous_core.webhooks import verify
from support.sinks import WebhookReceiver
from support.stack import Api, Origin, Stack, free_port, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def tenant_client(stack: Stack, api: Api) -> tuple[httpx.Client, str]:
    """A client for a new tenant, and that tenant's webhook secret (read with the CLI)."""
    name = f"hooks-{secrets.token_hex(3)}"
    key = stack.create_key(name)
    secret = stack.run("sous", "tenants", "webhook-secret", "show", "--tenant", name).stdout
    return api.client(key), secret.strip()


def webhook_settled(client: httpx.Client, job_id: str) -> dict:
    def settled() -> dict | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        hook = job["webhook"]
        return job if hook is not None and hook["state"] != "pending" else None

    return wait_until(settled, 30, f"the webhook of job {job_id} to settle")


def test_a_finished_job_is_posted_signed_to_its_callback(
    stack: Stack, api: Api, origin: Origin, receiver: WebhookReceiver
) -> None:
    client, secret = tenant_client(stack, api)
    path = f"/hook-{secrets.token_hex(4)}"
    with client:
        job_id = client.post(
            "/v1/fetches",
            json={"url": f"{origin.url}/ok", "callback_url": f"{receiver.url}{path}"},
        ).json()["id"]
        job = webhook_settled(client, job_id)

    assert job["state"] == "succeeded"
    assert job["webhook"]["state"] == "delivered"
    assert job["webhook"]["attempts"] == 1
    assert job["webhook"]["last_status_code"] == 200
    (posted,) = receiver.for_path(path)
    assert verify(secret, posted.body, posted.headers["Sous-Signature"])
    assert not verify("whsec_wrong", posted.body, posted.headers["Sous-Signature"])
    assert posted.headers["Sous-Event"] == "job.succeeded"
    assert posted.headers["Content-Type"] == "application/json"
    sent = posted.json()
    assert sent["id"] == job_id
    assert sent["state"] == "succeeded"
    assert sent["result"]["status_code"] == 200


def test_a_failing_receiver_is_retried_then_recorded_without_touching_the_job(
    stack: Stack, api: Api, origin: Origin
) -> None:
    failing = WebhookReceiver(status=500)
    client, _ = tenant_client(stack, api)
    try:
        with client:
            job_id = client.post(
                "/v1/fetches",
                json={"url": f"{origin.url}/ok", "callback_url": f"{failing.url}/down"},
            ).json()["id"]
            job = webhook_settled(client, job_id)
    finally:
        failing.close()
    assert job["state"] == "succeeded", "a webhook failure must not change the job"
    assert job["webhook"]["state"] == "failed"
    assert job["webhook"]["attempts"] == 3
    assert job["webhook"]["last_status_code"] == 500
    assert len(failing.for_path("/down")) == 3


def test_a_receiver_that_is_down_is_retried_then_recorded(
    stack: Stack, api: Api, origin: Origin
) -> None:
    client, _ = tenant_client(stack, api)
    with client:
        job_id = client.post(
            "/v1/fetches",
            json={
                "url": f"{origin.url}/status/404?from=webhook-test",
                "callback_url": f"http://127.0.0.1:{free_port()}/nobody-home",
            },
        ).json()["id"]
        job = webhook_settled(client, job_id)
    assert job["state"] == "failed"
    assert job["webhook"]["state"] == "failed"
    assert job["webhook"]["attempts"] == 3
    assert job["webhook"]["last_status_code"] is None
    assert "connect" in job["webhook"]["last_error"]


def test_a_callback_to_a_blocked_address_is_refused_without_retrying(
    stack: Stack, api: Api, origin: Origin, receiver: WebhookReceiver
) -> None:
    client, _ = tenant_client(stack, api)
    port = receiver.url.rsplit(":", 1)[1]
    with client:
        job_id = client.post(
            "/v1/fetches",
            json={"url": f"{origin.url}/ok", "callback_url": f"http://127.0.0.2:{port}/hook"},
        ).json()["id"]
        job = webhook_settled(client, job_id)
    assert job["webhook"]["state"] == "failed"
    assert job["webhook"]["attempts"] == 1
    assert "loopback" in job["webhook"]["last_error"]
    assert receiver.for_path("/hook") == []


def test_a_batch_calls_back_once_when_it_finishes(
    stack: Stack, api: Api, origin: Origin, receiver: WebhookReceiver
) -> None:
    client, secret = tenant_client(stack, api)
    path = f"/batch-{secrets.token_hex(4)}"
    with client:
        job_id = client.post(
            "/v1/fetches",
            json={
                "urls": [f"{origin.url}/ok", f"{origin.url}/status/410"],
                "callback_url": f"{receiver.url}{path}",
            },
        ).json()["id"]
        job = webhook_settled(client, job_id)
    assert job["webhook"]["state"] == "delivered"
    (posted,) = receiver.for_path(path)
    assert verify(secret, posted.body, posted.headers["Sous-Signature"])
    assert posted.json()["result"]["failed"] == 1


def test_rotating_the_secret_signs_later_webhooks_with_the_new_one(
    stack: Stack, api: Api, origin: Origin, receiver: WebhookReceiver
) -> None:
    name = f"rotate-{secrets.token_hex(3)}"
    key = stack.create_key(name)
    old = stack.run("sous", "tenants", "webhook-secret", "show", "--tenant", name).stdout.strip()
    rotated = stack.run("sous", "tenants", "webhook-secret", "rotate", "--tenant", name)
    new = rotated.stdout.strip()
    assert new != old
    assert new.startswith("whsec_")
    path = f"/rotated-{secrets.token_hex(4)}"
    with api.client(key) as client:
        job_id = client.post(
            "/v1/fetches", json={"url": f"{origin.url}/ok", "callback_url": f"{receiver.url}{path}"}
        ).json()["id"]
        webhook_settled(client, job_id)
    (posted,) = receiver.for_path(path)
    assert verify(new, posted.body, posted.headers["Sous-Signature"])
    assert not verify(old, posted.body, posted.headers["Sous-Signature"])
    missing = stack.run(
        "sous", "tenants", "webhook-secret", "show", "--tenant", "nope", check=False
    )
    assert missing.returncode != 0
    assert "no tenant named 'nope'" in missing.stderr


def test_the_readme_receiver_verifies_and_prints_jobs(
    stack: Stack, api: Api, origin: Origin, tmp_path: Path
) -> None:
    """examples/webhook_receiver.py, as the README shows it, accepts a real Sous webhook."""
    readme = (REPO / "README.md").read_text()
    example = (REPO / "examples" / "webhook_receiver.py").read_text()
    assert example in readme, "the README must show examples/webhook_receiver.py verbatim"

    client, secret = tenant_client(stack, api)
    port = free_port()
    log = tmp_path / "receiver.log"
    with log.open("wb") as out:
        receiver = subprocess.Popen(
            [sys.executable, str(REPO / "examples" / "webhook_receiver.py"), "--port", str(port)],
            env={**os.environ, "SOUS_WEBHOOK_SECRET": secret},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "listening" in log.read_text(), 10, "the receiver to listen")
        with client:
            job_id = client.post(
                "/v1/fetches",
                json={"url": f"{origin.url}/ok", "callback_url": f"http://127.0.0.1:{port}/"},
            ).json()["id"]
            job = webhook_settled(client, job_id)
    finally:
        receiver.terminate()
        receiver.wait(10)
    assert job["webhook"]["state"] == "delivered"
    assert job["webhook"]["last_status_code"] == 204
    assert f"job {job_id} fetch succeeded" in log.read_text()
