"""A local SMTP server for development: accepts every message and logs a line about it.

``make run`` starts it when no ``SOUS_SMTP_HOST`` is set, so email jobs work out of
the box; nothing leaves the machine. Each message is printed as one line (sender,
recipients, subject, size); ``--show-body`` prints the text part too.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import signal
import sys
import threading
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class LoggingHandler:
    def __init__(self, show_body: bool) -> None:
        self.show_body = show_body
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        assert isinstance(raw, bytes)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        self.count += 1
        print(
            f"mail #{self.count}: from {envelope.mail_from} to {', '.join(envelope.rcpt_tos)}"
            f" | subject: {message['Subject']!s} | {len(raw)} bytes",
            flush=True,
        )
        if self.show_body and isinstance(message, EmailMessage):
            part = message.get_body(("plain", "html"))
            if part is not None:
                print(part.get_content().rstrip(), flush=True)
        return "250 2.0.0 Ok: accepted by the Sous development mail sink"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    parser.add_argument("--port", type=int, default=1025, help="port to listen on (%(default)s)")
    parser.add_argument("--show-body", action="store_true", help="print each message's text")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    controller = Controller(LoggingHandler(args.show_body), hostname=args.host, port=args.port)
    controller.start()
    print(f"development mail sink listening on {args.host}:{args.port}", flush=True)
    stop.wait()
    controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
