"""Celery task and worker metrics, counted from Celery's signals in the process they fire in.

Publishers (API, scheduler, workers fanning out) count ``celery_task_sent_total`` and
stamp each message with its publish time; workers count received/started/succeeded/
failed/retried/rejected/revoked, observe runtime and queue wait, and track active tasks.
A job task that records a failed job returns normally to Celery; the job runner marks
its request so it counts as failed (``exception`` = the job's error code), which is
what an operator means by a failed task.
"""

from __future__ import annotations

import logging
import socket
import time
from datetime import datetime
from typing import Any

from celery import Task
from celery.signals import (
    before_task_publish,
    task_failure,
    task_postrun,
    task_prerun,
    task_received,
    task_rejected,
    task_retry,
    task_revoked,
    task_success,
    worker_ready,
    worker_shutdown,
)

from sous_core import metrics

logger = logging.getLogger("sous.metrics")

#: Message header with the publish time (Unix seconds); workers see it on ``task.request``.
PUBLISHED_AT_HEADER = "sous_published_at"
#: Set on a task's request by the job runner when the job it ran failed (its error code).
JOB_FAILED_ATTRIBUTE = "sous_job_failed"
UNKNOWN = "unknown"

_HOSTNAME = socket.gethostname()
#: Start times of the tasks running in this process, by task id.
_started: dict[str, float] = {}
_installed = {"publisher": False, "worker": False}


def _labels(task: Task | None, request: Any = None) -> dict[str, str]:
    request = request if request is not None else getattr(task, "request", None)
    delivery = getattr(request, "delivery_info", None) or {}
    return {
        "name": getattr(task, "name", None) or getattr(request, "name", None) or UNKNOWN,
        "hostname": getattr(request, "hostname", None) or _HOSTNAME,
        "queue_name": delivery.get("routing_key") or UNKNOWN,
    }


def _on_publish(
    sender: str | None = None,
    routing_key: str | None = None,
    headers: dict[str, Any] | None = None,
    **_kwargs: Any,
) -> None:
    if headers is not None:
        headers[PUBLISHED_AT_HEADER] = time.time()
    metrics.TASK_SENT.labels(
        name=sender or UNKNOWN, hostname=_HOSTNAME, queue_name=routing_key or UNKNOWN
    ).inc()


def _eta_timestamp(eta: Any) -> float | None:
    if isinstance(eta, datetime):
        return eta.timestamp()
    if isinstance(eta, str):
        try:
            return datetime.fromisoformat(eta).timestamp()
        except ValueError:
            return None
    return None


def _on_received(request: Any = None, **_kwargs: Any) -> None:
    metrics.TASK_RECEIVED.labels(**_labels(None, request)).inc()


def _on_prerun(task_id: str | None = None, task: Task | None = None, **_kwargs: Any) -> None:
    now = time.time()
    labels = _labels(task)
    metrics.TASK_STARTED.labels(**labels).inc()
    metrics.WORKER_TASKS_ACTIVE.labels(hostname=labels["hostname"]).inc()
    if task_id:
        _started[task_id] = time.monotonic()
    request = getattr(task, "request", None)
    published = getattr(request, PUBLISHED_AT_HEADER, None)
    if isinstance(published, int | float):
        due = max(published, _eta_timestamp(getattr(request, "eta", None)) or 0.0)
        metrics.TASK_QUEUE_WAIT.labels(**labels).observe(max(0.0, now - due))


def _on_postrun(task_id: str | None = None, task: Task | None = None, **_kwargs: Any) -> None:
    labels = _labels(task)
    metrics.WORKER_TASKS_ACTIVE.labels(hostname=labels["hostname"]).dec()
    started = _started.pop(task_id, None) if task_id else None
    if started is not None:
        metrics.TASK_RUNTIME.labels(**labels).observe(time.monotonic() - started)


def _on_success(sender: Task | None = None, **_kwargs: Any) -> None:
    failed_code = getattr(getattr(sender, "request", None), JOB_FAILED_ATTRIBUTE, None)
    if failed_code:
        metrics.TASK_FAILED.labels(**_labels(sender), exception=str(failed_code)).inc()
    else:
        metrics.TASK_SUCCEEDED.labels(**_labels(sender)).inc()


def _on_failure(
    sender: Task | None = None, exception: BaseException | None = None, **_kwargs: Any
) -> None:
    name = type(exception).__name__ if exception is not None else UNKNOWN
    metrics.TASK_FAILED.labels(**_labels(sender), exception=name).inc()


def _on_retry(sender: Task | None = None, request: Any = None, **_kwargs: Any) -> None:
    metrics.TASK_RETRIED.labels(**_labels(sender, request)).inc()


def _on_rejected(message: Any = None, **_kwargs: Any) -> None:
    headers = getattr(message, "headers", None) or {}
    delivery = getattr(message, "delivery_info", None) or {}
    metrics.TASK_REJECTED.labels(
        name=str(headers.get("task") or UNKNOWN),
        hostname=_HOSTNAME,
        queue_name=delivery.get("routing_key") or UNKNOWN,
    ).inc()


def _on_revoked(sender: Task | None = None, request: Any = None, **_kwargs: Any) -> None:
    metrics.TASK_REVOKED.labels(**_labels(sender, request)).inc()


def _on_worker_ready(sender: Any = None, **_kwargs: Any) -> None:
    metrics.WORKER_UP.labels(hostname=getattr(sender, "hostname", None) or _HOSTNAME).set(1)


def _on_worker_shutdown(sender: Any = None, **_kwargs: Any) -> None:
    metrics.WORKER_UP.labels(hostname=getattr(sender, "hostname", None) or _HOSTNAME).set(0)


def install_publisher_metrics() -> None:
    """Count published tasks and stamp their publish time (every publishing process)."""
    if not _installed["publisher"]:
        before_task_publish.connect(_on_publish, weak=False)
        _installed["publisher"] = True


def install_worker_metrics() -> None:
    """Count what this worker does with its tasks (also installs the publisher side)."""
    install_publisher_metrics()
    if _installed["worker"]:
        return
    for signal, handler in (
        (task_received, _on_received),
        (task_prerun, _on_prerun),
        (task_postrun, _on_postrun),
        (task_success, _on_success),
        (task_failure, _on_failure),
        (task_retry, _on_retry),
        (task_rejected, _on_rejected),
        (task_revoked, _on_revoked),
        (worker_ready, _on_worker_ready),
        (worker_shutdown, _on_worker_shutdown),
    ):
        signal.connect(handler, weak=False)
    _installed["worker"] = True
