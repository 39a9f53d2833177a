"""Log setup shared by every Sous process: JSON lines for collectors, text for people.

Every record carries the service, and when known the job id, the Celery task id and the
trace and span ids, so a user's "my job is slow" leads from a log line to its trace.
``SOUS_LOG_FORMAT=auto`` writes readable text when stdout is a terminal, JSON otherwise.
Both formats mask the secret of any API key in a line (a client that puts its key in a
URL would otherwise have it written by the access log).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any

from sous_core.redaction import redact
from sous_core.settings import get_settings

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s%(sous_context)s"

#: The job the current thread (greenlet, task) works on.
current_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "sous_job_id", default=None
)


@contextmanager
def job_context(job_id: uuid.UUID | str) -> Iterator[None]:
    """Tag every log record in this block with ``job_id``."""
    token = current_job_id.set(str(job_id))
    try:
        yield
    finally:
        current_job_id.reset(token)


def _task_id() -> str | None:
    task = sys.modules.get("celery._state")
    if task is None:
        return None
    current = task.get_current_task()
    request = getattr(current, "request", None) if current is not None else None
    return getattr(request, "id", None) if request is not None else None


def _trace_ids() -> tuple[str, str] | None:
    if "opentelemetry.trace" not in sys.modules:
        return None
    from sous_core.telemetry import current_trace_ids

    return current_trace_ids()


class ContextFilter(logging.Filter):
    """Adds ``service``, ``job_id``, ``task_id``, ``trace_id`` and ``span_id`` to records."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = current_job_id.get()
        ids = _trace_ids()
        trace_id, span_id = ids if ids else (None, None)
        record.service = self.service
        record.job_id = job_id
        record.task_id = _task_id()
        record.trace_id = trace_id
        record.span_id = span_id
        parts = [f"{key}={value}" for key, value in (("job", job_id), ("trace", trace_id)) if value]
        record.sous_context = f" [{' '.join(parts)}]" if parts else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the fields log collectors index."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "service": getattr(record, "service", None),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("job_id", "task_id", "trace_id", "span_id"):
            value = getattr(record, key, None)
            if value:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """Readable lines (``TEXT_FORMAT``) for people at a terminal."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def use_json(log_format: str, stream: IO[str]) -> bool:
    if log_format == "auto":
        isatty = getattr(stream, "isatty", None)
        return not (isatty is not None and isatty())
    return log_format == "json"


def configure_logging(service: str = "sous", level: str | None = None) -> None:
    """Send every log record of the process to stdout at the configured level and format."""
    settings = get_settings()
    level = level or settings.log_level
    stream = sys.stdout
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter(service))
    if use_json(settings.log_format, stream):
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Per-request client logs would drown the job events.
    for noisy in ("httpx", "httpcore", "amqp", "kombu"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
