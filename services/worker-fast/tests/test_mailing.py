"""Tests for send_email against a real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import email
import email.policy
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session
from pydantic import SecretStr

from sous_core.email_params import EmailParams
from sous_core.errors import PermanentJobError, TransientJobError
from sous_core.settings import Settings
from sous_worker_fast.mailing import _SMTP, SmtpConfig, send_email

QUEUED = "250 2.0.0 Ok: queued as 4Bc1"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes

    def body(self, preference: str) -> str:
        """The decoded body of the ``text/<preference>`` part, with Python's line endings."""
        part = self.message().get_body(preferencelist=(preference,))
        assert part is not None
        content: str = part.get_content()
        return content.replace("\r\n", "\n")

    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Recorder:
    """aiosmtpd handler that records mail, answers with canned replies, and logs the order."""

    #: Replies to RCPT TO by address; others are accepted.
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    mail_reply: str | None = None
    data_reply: str = QUEUED
    received: list[Received] = field(default_factory=list)
    #: DATA, QUIT and (appended by the tests' on_sent) "on_sent", in the order they happened.
    events: list[str] = field(default_factory=list)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.events.append("DATA")
        if self.data_reply == QUEUED:
            assert isinstance(envelope.mail_from, str)
            assert isinstance(envelope.content, bytes)
            self.received.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
            )
        return self.data_reply

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.events.append("QUIT")
        return "221 Bye"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def config_for(port: int, **changes: Any) -> SmtpConfig:
    fields: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "timeout": 5.0,
        "mail_from": "Sous <sous@example.org>",
    }
    return SmtpConfig(**(fields | changes))


StartServer = Callable[..., tuple[Recorder, SmtpConfig]]


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """Start an SMTP server with a fresh Recorder; extra arguments go to aiosmtpd's SMTP."""
    controllers: list[Controller] = []

    def start(**smtp_options: Any) -> tuple[Recorder, SmtpConfig]:
        recorder = Recorder()
        port = free_port()
        controller = Controller(
            recorder, hostname="127.0.0.1", port=port, server_hostname="smtp.test", **smtp_options
        )
        controller.start()
        controllers.append(controller)
        return recorder, config_for(port)

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
def server(start_server: StartServer) -> tuple[Recorder, SmtpConfig]:
    return start_server()


def params(**fields: Any) -> EmailParams:
    defaults = {"to": ["Ada Lovelace <ada@example.com>"], "subject": "Hello", "text": "Hi Ada\n"}
    return EmailParams.model_validate(defaults | fields)


def send(recorder: Recorder, email_params: EmailParams, config: SmtpConfig) -> dict[str, Any]:
    results: list[dict[str, Any]] = []

    def on_sent(result: dict[str, Any]) -> None:
        recorder.events.append("on_sent")
        results.append(result)

    returned = send_email(email_params, config, job_id="job-42", on_sent=on_sent)
    assert results == [returned]
    return returned


def test_message_arrives_with_its_headers(server: tuple[Recorder, SmtpConfig]) -> None:
    recorder, config = server
    email_params = params(
        to=["Ada Lovelace <ada@example.com>", "grace@example.com"],
        cc=["Bob, Jr. <bob@example.com>"],
        bcc=["audit@example.com"],
        subject="Your export is ready — Jörg",
        reply_to="Support <support@example.com>",
        headers={"List-Unsubscribe": "<mailto:stop@example.com>", "X-Campaign": "spring"},
    )

    result = send(recorder, email_params, config)

    [received] = recorder.received
    assert received.mail_from == "sous@example.org"
    assert received.rcpt_tos == [
        "ada@example.com",
        "grace@example.com",
        "bob@example.com",
        "audit@example.com",
    ]
    message = received.message()
    assert message["From"] == "Sous <sous@example.org>"
    assert message["To"] == "Ada Lovelace <ada@example.com>, grace@example.com"
    assert message["Cc"] == '"Bob, Jr." <bob@example.com>'
    assert "Bcc" not in message
    assert b"audit@" not in received.content
    assert message["Subject"] == "Your export is ready — Jörg"
    assert message["Reply-To"] == "Support <support@example.com>"
    assert message["List-Unsubscribe"] == "<mailto:stop@example.com>"
    assert message["X-Campaign"] == "spring"
    assert message["X-Sous-Job-Id"] == "job-42"
    assert message["Date"].datetime is not None
    assert message["Message-ID"].endswith("@example.org>")
    assert result["message_id"] == message["Message-ID"]
    assert result["smtp_completed"] is True
    assert result["accepted"] == received.rcpt_tos
    assert result["refused"] == {}
    assert result["smtp_reply"] == QUEUED
    assert result["sent_at"].endswith("+00:00")


def test_text_only_body(server: tuple[Recorder, SmtpConfig]) -> None:
    recorder, config = server

    send(recorder, params(text="Héllo Ada\n" + "long line " * 200 + "\n"), config)

    [received] = recorder.received
    assert received.message().get_content_type() == "text/plain"
    assert received.body("plain") == "Héllo Ada\n" + "long line " * 200 + "\n"


def test_html_only_body(server: tuple[Recorder, SmtpConfig]) -> None:
    recorder, config = server

    send(recorder, params(text=None, html="<p>Héllo</p>\n"), config)

    [received] = recorder.received
    assert received.message().get_content_type() == "text/html"
    assert received.body("html") == "<p>Héllo</p>\n"


def test_text_and_html_go_as_alternatives(server: tuple[Recorder, SmtpConfig]) -> None:
    recorder, config = server

    send(recorder, params(text="Héllo\n", html="<p>Héllo</p>\n"), config)

    [received] = recorder.received
    assert received.message().get_content_type() == "multipart/alternative"
    assert received.body("plain") == "Héllo\n"
    assert received.body("html") == "<p>Héllo</p>\n"


def test_on_sent_runs_once_after_data_and_before_quit(server: tuple[Recorder, SmtpConfig]) -> None:
    recorder, config = server

    send(recorder, params(), config)

    assert recorder.events == ["DATA", "on_sent", "QUIT"]


def test_temporary_failure_at_data_is_transient(server: tuple[Recorder, SmtpConfig]) -> None:
    recorder, config = server
    recorder.data_reply = "451 4.3.0 Try again later"

    with pytest.raises(TransientJobError) as caught:
        send(recorder, params(), config)

    assert caught.value.code == "smtp_temporary_failure"
    assert "451 4.3.0 Try again later" in caught.value.message
    assert "on_sent" not in recorder.events


def test_rejection_at_data_is_permanent(server: tuple[Recorder, SmtpConfig]) -> None:
    recorder, config = server
    recorder.data_reply = "550 5.7.1 Relaying denied"

    with pytest.raises(PermanentJobError) as caught:
        send(recorder, params(), config)

    assert caught.value.code == "smtp_rejected"
    assert caught.value.message == "The SMTP server refused the message: 550 5.7.1 Relaying denied"
    assert "on_sent" not in recorder.events


def test_refused_sender_is_permanent(server: tuple[Recorder, SmtpConfig]) -> None:
    recorder, config = server
    recorder.mail_reply = "553 5.7.1 Sender address rejected"

    with pytest.raises(PermanentJobError) as caught:
        send(recorder, params(), config)

    assert caught.value.code == "smtp_rejected"
    assert "sous@example.org" in caught.value.message
    assert "553 5.7.1 Sender address rejected" in caught.value.message


def test_all_recipients_refused_is_permanent(server: tuple[Recorder, SmtpConfig]) -> None:
    recorder, config = server
    recorder.rcpt_replies = {
        "ada@example.com": "550 5.1.1 No such user",
        "grace@example.com": "553 5.1.3 Bad address",
    }

    with pytest.raises(PermanentJobError) as caught:
        send(recorder, params(to=["ada@example.com", "grace@example.com"]), config)

    assert caught.value.code == "recipients_refused"
    assert "ada@example.com: 550 5.1.1 No such user" in caught.value.message
    assert "grace@example.com: 553 5.1.3 Bad address" in caught.value.message
    assert recorder.received == []


def test_recipients_refused_for_now_is_transient(server: tuple[Recorder, SmtpConfig]) -> None:
    recorder, config = server
    recorder.rcpt_replies = {
        "ada@example.com": "550 5.1.1 No such user",
        "grace@example.com": "452 4.2.2 Mailbox full",
    }

    with pytest.raises(TransientJobError) as caught:
        send(recorder, params(to=["ada@example.com", "grace@example.com"]), config)

    assert caught.value.code == "smtp_temporary_failure"
    assert "452 4.2.2 Mailbox full" in caught.value.message


def test_some_recipients_refused_still_sends(server: tuple[Recorder, SmtpConfig]) -> None:
    recorder, config = server
    recorder.rcpt_replies = {"grace@example.com": "550 5.1.1 No such user"}

    result = send(recorder, params(to=["ada@example.com"], cc=["grace@example.com"]), config)

    assert result["accepted"] == ["ada@example.com"]
    assert result["refused"] == {"grace@example.com": "550 5.1.1 No such user"}
    assert recorder.received[0].rcpt_tos == ["ada@example.com"]
    assert recorder.events == ["DATA", "on_sent", "QUIT"]


def test_nothing_listening_is_transient() -> None:
    config = config_for(free_port())

    with pytest.raises(TransientJobError) as caught:
        send(Recorder(), params(), config)

    assert caught.value.code == "smtp_unavailable"
    assert f"127.0.0.1:{config.port}" in caught.value.message


def test_silent_server_times_out_as_transient() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        config = config_for(listener.getsockname()[1], timeout=0.2)

        with pytest.raises(TransientJobError) as caught:
            send(Recorder(), params(), config)

    assert caught.value.code == "smtp_unavailable"


def test_starttls_not_offered_is_a_config_error(server: tuple[Recorder, SmtpConfig]) -> None:
    recorder, config = server

    with pytest.raises(PermanentJobError) as caught:
        send(recorder, params(), config_for(config.port, starttls=True))

    assert caught.value.code == "smtp_config"
    assert "STARTTLS" in caught.value.message
    assert recorder.received == []


def test_login_without_auth_offered_is_a_config_error(server: tuple[Recorder, SmtpConfig]) -> None:
    recorder, config = server

    with pytest.raises(PermanentJobError) as caught:
        send(recorder, params(), config_for(config.port, username="sous", password="pw"))

    assert caught.value.code == "smtp_config"


def _authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    # handled=False: aiosmtpd then sends the 535 reply itself (the default leaves it to us).
    return AuthResult(
        success=(auth_data.login, auth_data.password) == (b"sous", b"right"), handled=False
    )


def test_login(start_server: StartServer) -> None:
    recorder, config = start_server(authenticator=_authenticate, auth_require_tls=False)
    good = config_for(config.port, username="sous", password="right")
    bad = config_for(config.port, username="sous", password="wrong")

    send(recorder, params(), good)
    with pytest.raises(PermanentJobError) as caught:
        send(recorder, params(), bad)

    assert len(recorder.received) == 1
    assert caught.value.code == "smtp_auth_failed"
    assert "535" in caught.value.message


def test_config_from_settings() -> None:
    settings = Settings(
        smtp_host="mail.example.com",
        smtp_port=587,
        smtp_username="sous",
        smtp_password=SecretStr("s3cret"),
        smtp_starttls=True,
        smtp_timeout=12.5,
        mail_from="Sous <sous@example.com>",
    )

    config = SmtpConfig.from_settings(settings)

    assert config == SmtpConfig(
        host="mail.example.com",
        port=587,
        username="sous",
        password="s3cret",
        starttls=True,
        timeout=12.5,
        mail_from="Sous <sous@example.com>",
    )
    assert "s3cret" not in repr(config)


def send_with_doubt(
    recorder: Recorder, email_params: EmailParams, config: SmtpConfig
) -> list[dict[str, Any]]:
    marks: list[dict[str, Any]] = []

    def on_doubt(mark: dict[str, Any]) -> None:
        recorder.events.append(f"doubt={mark['smtp_in_doubt']}")
        marks.append(mark)

    send_email(
        email_params,
        config,
        job_id="job-42",
        on_sent=lambda _: recorder.events.append("on_sent"),
        on_doubt=on_doubt,
    )
    return marks


def test_the_hand_over_is_marked_before_the_message_ends(
    server: tuple[Recorder, SmtpConfig],
) -> None:
    recorder, config = server

    marks = send_with_doubt(recorder, params(text=".hidden line\n..two dots\n.\nend\n"), config)

    assert recorder.events == ["doubt=True", "DATA", "on_sent", "QUIT"]
    assert marks[0]["message_id"] == recorder.received[0].message()["Message-ID"]
    assert marks[0]["handed_over_at"]
    # Sent apart from its end, the message is still dot-stuffed as RFC 5321 wants.
    assert recorder.received[0].body("plain") == ".hidden line\n..two dots\n.\nend\n"


def test_a_refusal_after_the_hand_over_clears_the_doubt(
    server: tuple[Recorder, SmtpConfig],
) -> None:
    recorder, config = server
    recorder.data_reply = "451 4.3.0 Try again later"

    with pytest.raises(TransientJobError):
        send_with_doubt(recorder, params(), config)

    assert recorder.events == ["doubt=True", "DATA", "doubt=False"]


def test_a_failed_hand_over_record_leaves_the_message_unended(
    server: tuple[Recorder, SmtpConfig],
) -> None:
    recorder, config = server

    def unrecorded(_mark: dict[str, Any]) -> None:
        raise TransientJobError("database_unavailable", "not recorded")

    with pytest.raises(TransientJobError):
        send_email(params(), config, job_id="job-42", on_sent=lambda _: None, on_doubt=unrecorded)

    assert "DATA" not in recorder.events  # the server never saw the end: nothing delivered
    assert recorder.received == []


def test_the_connection_sends_small_writes_at_once(server: tuple[Recorder, SmtpConfig]) -> None:
    """TCP_NODELAY: the message's end (a write of its own, see ``_SMTP.data``) must not wait
    for the server to acknowledge the body; a server delays that acknowledgement (40 ms on
    Linux) because it has nothing to answer before the end, and every email waited."""
    _recorder, config = server
    smtp = _SMTP(config.host, config.port, timeout=config.timeout)
    try:
        assert smtp.sock is not None
        assert smtp.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        smtp.close()
