"""Real servers the fast jobs talk to in tests: an SMTP sink and a webhook receiver."""

from __future__ import annotations

import asyncio
import email
import email.policy
import http.server
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from support.stack import LocalHttpServer, free_port


@dataclass
class Delivered:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    #: When the sink accepted it (Unix time).
    received_at: float = field(default_factory=time.time)


class SmtpSink:
    """An SMTP server that keeps every message, with behaviour chosen by recipient address.

    ``tempfail-once-<x>@…`` is answered 451 at DATA the first time, then accepted;
    ``reject-<x>@…`` gets 550 at DATA; ``nobody-<x>@…`` is refused at RCPT (550);
    ``slow-<x>@…`` is accepted ``slow_seconds`` after its DATA arrived (a wide window in
    which the sending worker can be interrupted mid-send).
    ``on_quit`` (if set) runs when a client that delivered a message says QUIT.

    With ``credentials`` (``(username, password)``) it offers AUTH PLAIN and LOGIN without
    TLS and refuses recipients of a client that has not logged in; ``credentials`` can be
    changed while it runs (a rotated password), and ``logins`` lists who logged in.
    """

    def __init__(
        self, credentials: tuple[str, str] | None = None, slow_seconds: float = 3.0
    ) -> None:
        self.slow_seconds = slow_seconds
        self.messages: list[Delivered] = []
        self.attempts: Counter[str] = Counter()
        self.on_quit: Callable[[], None] | None = None
        self.credentials = credentials
        self.logins: list[str] = []
        self._lock = threading.Lock()
        self.port = free_port()
        auth: dict[str, Any] = {}
        if credentials is not None:
            auth = {"authenticator": self._authenticate, "auth_require_tls": False}
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, **auth)
        self.controller.start()

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        given = (
            (data.login.decode(errors="replace"), data.password.decode(errors="replace"))
            if isinstance(data, LoginPassword)
            else None
        )
        if given is None or given != self.credentials:
            return AuthResult(success=False, handled=False)
        with self._lock:
            self.logins.append(given[0])
        return AuthResult(success=True, auth_data=data)

    def close(self) -> None:
        self.controller.stop()

    def to(self, address: str) -> list[Delivered]:
        with self._lock:
            return [m for m in self.messages if address in m.rcpt_tos]

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        if self.credentials is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if address.startswith("nobody-"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if envelope.rcpt_tos and envelope.rcpt_tos[0].startswith("slow-"):
            await asyncio.sleep(self.slow_seconds)
        with self._lock:
            for address in envelope.rcpt_tos:
                self.attempts[address] += 1
            first = envelope.rcpt_tos[0]
            if first.startswith("reject-"):
                return "550 5.7.1 Message rejected by policy"
            if first.startswith("tempfail-once-") and self.attempts[first] == 1:
                return "451 4.3.0 Temporary failure, try again later"
            raw = envelope.original_content or envelope.content
            assert isinstance(raw, bytes)
            message = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            self.messages.append(
                Delivered(str(envelope.mail_from), list(envelope.rcpt_tos), message)
            )
            session.delivered = True  # type: ignore[attr-defined]
        return "250 2.0.0 Ok: queued"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if getattr(session, "delivered", False) and self.on_quit is not None:
            self.on_quit()
        return "221 Bye"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """An HTTP server taking webhook POSTs; answers ``status`` (changeable) and keeps them."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[Received] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                receiver.received.append(Received(self.path, dict(self.headers.items()), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = LocalHttpServer(Handler)
        self.url = self.server.url

    def for_path(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    def close(self) -> None:
        self.server.close()
