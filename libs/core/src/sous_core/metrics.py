"""Every Prometheus metric a Sous process exports, defined in one place.

Worker metrics use the names of the widely used celery-exporter (``celery_task_*``,
``celery_worker_*``, ``celery_queue_length``) so its public Grafana dashboards work
against Sous unchanged; Sous's own carry the ``sous_`` prefix. Dashboards and alert
rules may only reference names listed by :func:`exported_names` (a test checks).

Import this module only after :func:`sous_core.metrics_process.prepare_multiprocess`
when the process forks workers: the value class is chosen when a metric is created.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, values

# The entry point may have set PROMETHEUS_MULTIPROC_DIR after prometheus_client was first
# imported (by a library); choose the value class again so the metrics below follow it.
values.ValueClass = values.get_value_class()
# ``*_created`` series double the sample count and no dashboard uses them.
disable_created_metrics()

TASK_LABELS = ("name", "hostname", "queue_name")

# --- Celery tasks and workers (celery-exporter names) ----------------------------------
TASK_SENT = Counter("celery_task_sent", "Tasks published.", TASK_LABELS)
TASK_RECEIVED = Counter("celery_task_received", "Tasks a worker took from its queue.", TASK_LABELS)
TASK_STARTED = Counter("celery_task_started", "Tasks a worker started running.", TASK_LABELS)
TASK_SUCCEEDED = Counter("celery_task_succeeded", "Tasks that returned.", TASK_LABELS)
TASK_FAILED = Counter(
    "celery_task_failed", "Tasks that raised, by exception type.", (*TASK_LABELS, "exception")
)
TASK_RETRIED = Counter("celery_task_retried", "Tasks that asked to be retried.", TASK_LABELS)
TASK_REJECTED = Counter(
    "celery_task_rejected", "Messages a worker rejected (unknown task, bad body).", TASK_LABELS
)
TASK_REVOKED = Counter("celery_task_revoked", "Tasks revoked before or while running.", TASK_LABELS)
TASK_RUNTIME = Histogram(
    "celery_task_runtime",
    "Seconds a task ran (start to finish, any outcome).",
    TASK_LABELS,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 14400),
)
TASK_QUEUE_WAIT = Histogram(
    "celery_task_queue_wait_time",
    "Seconds from publish (or the retry's due time) to the start of the task.",
    TASK_LABELS,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
WORKER_UP = Gauge(
    "celery_worker_up",
    "1 while the worker consumes its queues.",
    ("hostname",),
    multiprocess_mode="livemax",
)
WORKER_TASKS_ACTIVE = Gauge(
    "celery_worker_tasks_active",
    "Tasks running now.",
    ("hostname",),
    multiprocess_mode="livesum",
)

#: Read from the broker at scrape time by the scheduler (one per installation), see
#: :class:`sous_core.queue_metrics.BrokerQueueCollector`.
QUEUE_METRICS = {
    "celery_queue_length": "Messages ready for delivery in the queue (RabbitMQ's view).",
    "sous_queue_unacked_messages": "Messages delivered to a worker and not yet acknowledged.",
    "celery_active_consumer_count": "Consumers attached to the queue.",
    "sous_queue_stats_up": "1 when the broker answered the last queue-depth read.",
}

# --- Sous jobs ---------------------------------------------------------------------------
JOBS_SUBMITTED = Counter("sous_jobs_submitted", "Jobs accepted (API and schedules).", ("kind",))
JOBS_FINISHED = Counter(
    "sous_jobs_finished", "Jobs that reached a terminal state.", ("kind", "state")
)
TRANSCODE_SPEED = Histogram(
    "sous_transcode_speed",
    "Transcode speed: seconds of input processed per second of wall time (x realtime).",
    ("preset",),
    buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128),
)
TRANSCODE_INPUT_SECONDS = Counter(
    "sous_transcode_input_seconds", "Seconds of input video transcoded.", ("preset",)
)
EMAILS_SENT = Counter("sous_emails_sent", "Emails the SMTP server accepted.")
EMAIL_RECIPIENTS_REFUSED = Counter(
    "sous_email_recipients_refused", "Recipients the SMTP server refused in accepted emails."
)
FETCHES = Counter(
    "sous_fetches", "URL fetches, by outcome (HTTP status class or error).", ("outcome",)
)
FETCH_BYTES = Counter("sous_fetch_bytes", "Response body bytes read by URL fetches.")
WEBHOOK_DELIVERIES = Counter(
    "sous_webhook_deliveries",
    "Webhook delivery attempts: delivered, retry (will try again) or gave_up.",
    ("outcome",),
)
DEAD_LETTERED = Counter(
    "sous_dead_lettered",
    "Task messages dead-lettered after too many deliveries, by the queue they came from.",
    ("queue_name",),
)

# --- Scheduler -----------------------------------------------------------------------------
SCHEDULER_TICKS_FIRED = Counter(
    "sous_scheduler_ticks_fired",
    "Ticks the scheduler fired: maintenance tasks and user schedules.",
    ("source",),
)
SCHEDULER_LAST_FIRE = Gauge(
    "sous_scheduler_last_fire_timestamp_seconds",
    "Unix time of the last tick fired.",
    multiprocess_mode="max",
)
SCHEDULER_LAST_LOOP = Gauge(
    "sous_scheduler_last_loop_timestamp_seconds",
    "Unix time the scheduler last looked for due ticks (alive even when nothing is due).",
    multiprocess_mode="max",
)

# --- API -----------------------------------------------------------------------------------
API_REQUESTS = Counter(
    "sous_api_requests",
    "HTTP requests by route template, method and status.",
    ("route", "method", "status"),
)
API_REQUEST_DURATION = Histogram(
    "sous_api_request_duration_seconds",
    "HTTP request latency (until the response's last byte) by route template, method, status.",
    ("route", "method", "status"),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
API_BROKER_UNAVAILABLE = Counter(
    "sous_api_broker_unavailable",
    "Submissions answered 503 because the broker did not confirm the message.",
    ("kind",),
)
API_QUOTA_REJECTIONS = Counter(
    "sous_api_quota_rejections", "Submissions refused by a tenant's daily quota.", ("kind",)
)
API_SUBMISSION_BATCH_SIZE = Histogram(
    "sous_api_submission_batch_size",
    "Jobs submitted together in one transaction and one confirm wait (concurrent requests).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200),
)
#: Computed from the database at scrape time by the API (``sous_api.metrics``).
API_DATABASE_METRICS = {
    "sous_api_keys_active": "API keys usable now (not revoked, not expired).",
    "sous_api_keys_expiring_soon": "Usable API keys that expire within the warning period.",
}


def exported_names() -> set[str]:
    """Every sample name Sous can export (``_total``, ``_bucket``, … included)."""
    names: set[str] = set(QUEUE_METRICS) | set(API_DATABASE_METRICS)
    for metric in (
        value for value in globals().values() if isinstance(value, Counter | Gauge | Histogram)
    ):
        base = metric._name
        if isinstance(metric, Counter):
            names.add(f"{base}_total")
        elif isinstance(metric, Histogram):
            names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
        else:
            names.add(base)
    return names
