"""Email jobs through HTTP, RabbitMQ and a real fast worker to a real SMTP server."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest

from support.sinks import SmtpSink
from support.stack import Stack, make_stack, wait_for_job, wait_until

pytestmark = pytest.mark.integration


def address(kind: str = "user") -> str:
    return f"{kind}-{secrets.token_hex(4)}@example.com"


def test_an_email_arrives_with_its_headers_and_bodies(
    client: httpx.Client, smtp_sink: SmtpSink
) -> None:
    to, cc, bcc = address(), address(), address()
    response = client.post(
        "/v1/emails",
        json={
            "to": [f"Ada Lovelace <{to}>"],
            "cc": [cc],
            "bcc": [bcc],
            "subject": "Your report is ready",
            "text": "Hello Ada,\nthe report is ready.",
            "html": "<p>Hello Ada,</p><p>the report is ready.</p>",
            "reply_to": "support@example.com",
            "headers": {"X-Campaign": "reports"},
        },
    )
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["id"], {"succeeded", "failed"})
    assert job["state"] == "succeeded", job
    assert job["kind"] == "email"
    assert job["attempts"] == 1
    assert job["result"]["smtp_completed"] is True
    assert sorted(job["result"]["accepted"]) == sorted([to, cc, bcc])

    (delivered,) = smtp_sink.to(to)
    assert sorted(delivered.rcpt_tos) == sorted([to, cc, bcc])
    message = delivered.message
    assert message["To"] == f"Ada Lovelace <{to}>"
    assert message["Cc"] == cc
    assert message["Bcc"] is None, "bcc recipients must not be visible"
    assert message["Subject"] == "Your report is ready"
    assert message["Reply-To"] == "support@example.com"
    assert message["X-Campaign"] == "reports"
    assert message["X-Sous-Job-Id"] == job["id"]
    assert message["Message-ID"] == job["result"]["message_id"]
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert "the report is ready." in text.get_content()
    assert html is not None
    assert "<p>Hello Ada,</p>" in html.get_content()


def test_a_temporary_failure_is_retried_and_delivered_once(
    client: httpx.Client, smtp_sink: SmtpSink
) -> None:
    to = address("tempfail-once")
    job_id = client.post("/v1/emails", json={"to": [to], "subject": "s", "text": "t"}).json()["id"]
    job = wait_for_job(client, job_id, {"succeeded", "failed"}, timeout=60)
    assert job["state"] == "succeeded", job
    assert job["attempts"] == 2
    assert smtp_sink.attempts[to] == 2
    assert len(smtp_sink.to(to)) == 1


@pytest.mark.parametrize(
    ("kind", "code", "reply"),
    [
        ("reject", "smtp_rejected", "550 5.7.1 Message rejected by policy"),
        ("nobody", "recipients_refused", "User unknown"),
    ],
)
def test_a_permanent_refusal_fails_at_once_with_the_server_reply(
    client: httpx.Client, smtp_sink: SmtpSink, kind: str, code: str, reply: str
) -> None:
    to = address(kind)
    job_id = client.post("/v1/emails", json={"to": [to], "subject": "s", "text": "t"}).json()["id"]
    job = wait_for_job(client, job_id, {"succeeded", "failed"})
    assert job["state"] == "failed"
    assert job["error"]["code"] == code
    assert reply in job["error"]["message"]
    assert job["attempts"] == 1, "a permanent refusal must not be retried"
    assert smtp_sink.to(to) == []


@pytest.mark.parametrize(
    ("body", "status", "mentions"),
    [
        ({"to": ["a@example.com"], "subject": "hi\r\nBcc: x@evil.test", "text": "t"}, 422, "line"),
        (
            {"to": ["a@example.com"], "subject": "s", "text": "t", "headers": {"X-A": "1\n2"}},
            422,
            "line",
        ),
        ({"to": ["not-an-address"], "subject": "s", "text": "t"}, 422, "to"),
        ({"to": ["a@example.com"], "subject": "s"}, 422, "text or an html body"),
        ({"to": [f"r{i}@example.com" for i in range(51)], "subject": "s", "text": "t"}, 422, "51"),
        ({"to": ["a@example.com"], "subject": "s", "text": "x" * 600_000}, 413, "bytes"),
    ],
)
def test_bad_emails_are_refused_with_a_clear_message(
    client: httpx.Client, body: dict, status: int, mentions: str
) -> None:
    response = client.post("/v1/emails", json=body)
    assert response.status_code == status, response.text
    assert mentions in response.json()["error"]["message"]
    assert client.get("/v1/jobs", params={"kind": "email"}).json()["items"] == []


def test_a_worker_dying_after_the_send_does_not_send_again(tmp_path: Path) -> None:
    sink = SmtpSink()
    try:
        with make_stack(tmp_path, SOUS_SMTP_PORT=str(sink.port)) as stack:
            _crash_after_send(stack, sink)
    finally:
        sink.close()


def _crash_after_send(stack: Stack, sink: SmtpSink) -> None:
    worker = stack.start_fast_worker("worker-doomed")
    # The mail server saw the whole message; the worker dies before it acks the task.
    sink.on_quit = worker.kill
    api = stack.start_api()
    to = address()
    with api.client(stack.create_key("acme")) as client:
        job_id = client.post(
            "/v1/emails", json={"to": [to], "subject": "once", "text": "only once"}
        ).json()["id"]
        wait_until(lambda: worker.popen.poll() is not None, 30, "the worker to be killed")
        sink.on_quit = None
        stack.start_fast_worker("worker-replacement")
        job = wait_for_job(client, job_id, {"succeeded", "failed"}, timeout=60)
    assert job["state"] == "succeeded", job
    assert job["attempts"] == 2, "the task was redelivered to the new worker"
    assert len(sink.to(to)) == 1
    assert sink.attempts[to] == 1
