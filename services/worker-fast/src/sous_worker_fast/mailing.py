"""Send one email job over SMTP and sort SMTP failures into transient and permanent ones."""

from __future__ import annotations

import contextlib
import datetime
import email.policy
import email.utils
import re
import smtplib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from sous_core.email_params import EmailParams, bare_address
from sous_core.errors import JobError, PermanentJobError, TransientJobError
from sous_core.settings import Settings


@dataclass(frozen=True)
class SmtpConfig:
    """Where and as whom email jobs are sent."""

    host: str
    port: int
    username: str = ""
    password: str = field(default="", repr=False)
    #: Upgrade the connection with STARTTLS, verifying the server's certificate.
    starttls: bool = False
    #: Seconds each SMTP command may take.
    timeout: float = 30.0
    #: ``From`` of every email: ``Name <address>`` or an address.
    mail_from: str = "Sous <sous@localhost>"

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpConfig:
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value(),
            starttls=settings.smtp_starttls,
            timeout=settings.smtp_timeout,
            mail_from=settings.mail_from,
        )


class _SMTP(smtplib.SMTP):
    """``smtplib.SMTP`` that keeps the server's reply to DATA, which ``send_message`` drops,
    and calls ``before_final_dot`` when the message is on the wire but not yet ended.

    The line that ends the message (``.``) is the point of no return: once the server
    has it, the mail may be delivered even if its reply never reaches us.
    """

    data_reply: tuple[int, bytes] | None = None
    before_final_dot: Callable[[], None] | None = None

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        # Without TCP_NODELAY, the message's end waits for the server to acknowledge the
        # message: the server has nothing to answer before the end, so it delays that
        # acknowledgement (40 ms on Linux) and every email took that much longer.
        sock = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def data(self, msg: Any) -> tuple[int, bytes]:
        # smtplib.SMTP.data, with the message and its end sent apart.
        self.putcmd("data")
        code, reply = self.getreply()
        if code != 354:
            raise smtplib.SMTPDataError(code, reply)
        if isinstance(msg, str):
            msg = msg.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")
            msg = msg.encode("ascii")
        body = _DOT_AT_LINE_START.sub(b"..", msg)
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        self.send(body)
        if self.before_final_dot is not None:
            self.before_final_dot()
        self.send(b".\r\n")
        self.data_reply = self.getreply()
        return self.data_reply


#: RFC 5321 dot-stuffing: a line of the message that starts with "." gets another.
_DOT_AT_LINE_START = re.compile(rb"(?m)^\.")


def build_message(params: EmailParams, config: SmtpConfig, *, job_id: str) -> EmailMessage:
    """The message as sent: headers from ``params`` and ``config``, no Bcc header."""
    sender_domain = bare_address(config.mail_from).rpartition("@")[2] or "localhost"
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = config.mail_from
    message["To"] = ", ".join(params.to)
    if params.cc:
        message["Cc"] = ", ".join(params.cc)
    message["Subject"] = params.subject
    if params.reply_to:
        message["Reply-To"] = params.reply_to
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = email.utils.make_msgid(domain=sender_domain)
    message["X-Sous-Job-Id"] = job_id
    for name, value in params.headers.items():
        message[name] = value
    if params.text and params.html:
        message.set_content(params.text)
        message.add_alternative(params.html, subtype="html")
    elif params.text:
        message.set_content(params.text)
    else:
        message.set_content(params.html or "", subtype="html")
    return message


def send_email(
    params: EmailParams,
    config: SmtpConfig,
    *,
    job_id: str,
    on_sent: Callable[[dict[str, Any]], None],
    on_doubt: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Send the email; call ``on_sent(result)`` once the server took it, before QUIT.

    ``on_sent`` is where the caller records that the mail went out, so a redelivered task
    does not send it again. ``on_doubt(mark)`` runs just before the line that ends the
    message, with ``mark["smtp_in_doubt"]`` true: from there until the server answers,
    whether the mail went out is unknown (if ``on_doubt`` raises, the message is never
    ended and the server drops it); and again with it false if the server then refused
    the message, so that a retry may send it. Failures raise ``TransientJobError`` or
    ``PermanentJobError``; recipients refused while others were accepted are listed in
    the result instead.
    """
    message = build_message(params, config, job_id=job_id)
    recipients = params.all_recipients()
    where = f"{config.host}:{config.port}"
    try:
        smtp = _SMTP(config.host, config.port, timeout=config.timeout)
    except (smtplib.SMTPException, OSError) as exc:
        raise _job_error(exc, where) from exc
    if on_doubt is not None:
        doubt = on_doubt

        def mark_in_doubt() -> None:
            doubt(
                {
                    "smtp_in_doubt": True,
                    "message_id": message["Message-ID"],
                    "handed_over_at": datetime.datetime.now(datetime.UTC).isoformat(),
                }
            )

        smtp.before_final_dot = mark_in_doubt
    try:
        try:
            _open_session(smtp, config, where)
            refused = smtp.send_message(
                message, from_addr=bare_address(config.mail_from), to_addrs=recipients
            )
        except smtplib.SMTPDataError as exc:
            if on_doubt is not None and smtp.data_reply is not None:
                # The server answered the end of the message with a refusal: not sent.
                on_doubt({"smtp_in_doubt": False, "smtp_reply": _reply_text(*smtp.data_reply)})
            raise _job_error(exc, where) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise _job_error(exc, where) from exc
        result: dict[str, Any] = {
            "smtp_completed": True,
            "message_id": message["Message-ID"],
            "accepted": [address for address in recipients if address not in refused],
            "refused": {address: _reply_text(*reply) for address, reply in refused.items()},
            "smtp_reply": _reply_text(*smtp.data_reply) if smtp.data_reply else None,
            "sent_at": datetime.datetime.now(datetime.UTC).isoformat(),
        }
        on_sent(result)
        # The server has the mail already; a failed goodbye changes nothing.
        with contextlib.suppress(smtplib.SMTPException, OSError):
            smtp.quit()
        return result
    finally:
        with contextlib.suppress(OSError):
            smtp.close()


def _open_session(smtp: smtplib.SMTP, config: SmtpConfig, where: str) -> None:
    smtp.ehlo_or_helo_if_needed()
    if config.starttls:
        if not smtp.has_extn("starttls"):
            raise PermanentJobError(
                "smtp_config",
                f"The SMTP server at {where} does not offer STARTTLS, "
                "but Sous is configured to require it (SOUS_SMTP_STARTTLS).",
            )
        smtp.starttls(context=ssl.create_default_context())
        smtp.ehlo_or_helo_if_needed()  # STARTTLS forgot the first greeting
    if config.username:
        smtp.login(config.username, config.password)


def _job_error(exc: OSError, where: str) -> JobError:
    """The job error for a failure talking to the SMTP server at ``where``."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return _recipients_error(exc)
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return PermanentJobError(
            "smtp_auth_failed",
            f"The SMTP server at {where} refused the login: "
            f"{_reply_text(exc.smtp_code, exc.smtp_error)}",
        )
    if isinstance(exc, smtplib.SMTPConnectError):
        return TransientJobError(
            "smtp_unavailable",
            f"The SMTP server at {where} turned the connection away: "
            f"{_reply_text(exc.smtp_code, exc.smtp_error)}",
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        return _response_error(exc)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return PermanentJobError("smtp_config", f"The SMTP server at {where} cannot do this: {exc}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PermanentJobError(
            "smtp_config", f"The TLS certificate of the SMTP server at {where} is not valid: {exc}"
        )
    if isinstance(exc, smtplib.SMTPServerDisconnected) or not isinstance(
        exc, smtplib.SMTPException
    ):
        return TransientJobError(
            "smtp_unavailable", f"The SMTP server at {where} could not be reached: {exc}"
        )
    return PermanentJobError("smtp_config", f"The SMTP exchange with {where} failed: {exc}")


def _response_error(exc: smtplib.SMTPResponseException) -> JobError:
    reply = _reply_text(exc.smtp_code, exc.smtp_error)
    if isinstance(exc, smtplib.SMTPSenderRefused):
        what = f"the sender {exc.sender}"
    elif isinstance(exc, smtplib.SMTPHeloError):
        what = "the greeting"
    else:
        what = "the message"
    if exc.smtp_code >= 500:
        return PermanentJobError("smtp_rejected", f"The SMTP server refused {what}: {reply}")
    return TransientJobError(
        "smtp_temporary_failure", f"The SMTP server could not take {what} now: {reply}"
    )


def _recipients_error(exc: smtplib.SMTPRecipientsRefused) -> JobError:
    replies = {address: _reply_text(*reply) for address, reply in exc.recipients.items()}
    listing = "; ".join(f"{address}: {reply}" for address, reply in replies.items())
    if all(code >= 500 for code, _ in exc.recipients.values()):
        return PermanentJobError(
            "recipients_refused", f"The SMTP server refused every recipient: {listing}"
        )
    return TransientJobError(
        "smtp_temporary_failure",
        f"The SMTP server could not take any recipient now: {listing}",
    )


def _reply_text(code: int, text: bytes | str) -> str:
    """``550 5.7.1 Relaying denied`` from a reply code and its (possibly multi-line) text."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return f"{code} {' '.join(text.split())}".strip()
