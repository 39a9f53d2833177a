"""Logs, metrics files and the metric catalog, without any service running."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.orm import Session

from sous_core import apikeys, metrics, telemetry
from sous_core.logs import ContextFilter, JsonFormatter, TextFormatter, job_context, use_json
from sous_core.metrics_process import forget_dead_processes

#: The celery-exporter names the issue asks for; its public dashboards query these.
CELERY_EXPORTER_NAMES = {
    "celery_task_sent_total",
    "celery_task_received_total",
    "celery_task_started_total",
    "celery_task_succeeded_total",
    "celery_task_failed_total",
    "celery_task_retried_total",
    "celery_task_rejected_total",
    "celery_task_revoked_total",
    "celery_task_runtime_bucket",
    "celery_task_queue_wait_time_bucket",
    "celery_worker_up",
    "celery_worker_tasks_active",
    "celery_queue_length",
}


def test_the_catalog_exports_the_celery_exporter_names_and_sous_own() -> None:
    names = metrics.exported_names()
    assert names >= CELERY_EXPORTER_NAMES
    assert {
        "sous_jobs_finished_total",
        "sous_transcode_speed_bucket",
        "sous_transcode_input_seconds_total",
        "sous_emails_sent_total",
        "sous_fetch_bytes_total",
        "sous_webhook_deliveries_total",
        "sous_dead_lettered_total",
        "sous_scheduler_ticks_fired_total",
        "sous_scheduler_last_fire_timestamp_seconds",
    } <= names
    assert not {name for name in names if name.endswith("_created")}


def record(message: str = "hello %s", *args: object) -> logging.LogRecord:
    return logging.LogRecord("sous.test", logging.WARNING, __file__, 1, message, args, None)


def test_json_lines_carry_service_job_and_level() -> None:
    line = record("job %s done", "x")
    with job_context("0b5c7e7e-6c44-4a0e-9d0f-1d2d3c4b5a69"):
        ContextFilter("sous-worker-fast").filter(line)
    entry = json.loads(JsonFormatter().format(line))
    assert entry["service"] == "sous-worker-fast"
    assert entry["level"] == "WARNING"
    assert entry["message"] == "job x done"
    assert entry["logger"] == "sous.test"
    assert entry["job_id"] == "0b5c7e7e-6c44-4a0e-9d0f-1d2d3c4b5a69"
    assert entry["timestamp"].endswith("+00:00")
    assert "trace_id" not in entry, "no span is active"


def test_outside_a_job_no_job_id_is_invented() -> None:
    line = record()
    ContextFilter("sous-api").filter(line)
    assert "job_id" not in json.loads(JsonFormatter().format(line))


def test_exceptions_stay_inside_one_json_line() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        line = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    ContextFilter("sous-api").filter(line)
    text = JsonFormatter().format(line)
    assert "\n" not in text
    assert "ValueError: bad" in json.loads(text)["exception"]


def test_api_key_secrets_are_masked_in_text_and_json_lines(session: Session) -> None:
    tenant, _ = apikeys.get_or_create_tenant(session, "acme")
    token = apikeys.create_key(session, tenant).token
    parts = apikeys.split_token(token)
    assert parts is not None
    prefix, secret = parts
    # What uvicorn's access log writes for a client that put its key in the query string.
    access = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:50000", "GET", f"/v1/jobs?api_key={token}&limit=2", "1.1", 200),
        None,
    )
    try:
        raise ValueError(f"no job called {token}")
    except ValueError:
        failed = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "on %s", (token,), sys.exc_info()
        )
    for line in (access, failed):
        ContextFilter("sous-api").filter(line)
        for formatter in (TextFormatter(), JsonFormatter()):
            text = formatter.format(line)
            assert secret not in text
            assert f"sous_{prefix}_***" in text
    assert f"api_key=sous_{prefix}_***&limit=2 HTTP/1.1" in TextFormatter().format(access)


def test_the_request_span_loses_the_key_a_client_put_in_its_url() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    key = "sous_0123456789ab_" + "s3cr3t" * 7
    target = f"/v1/jobs?api_key={key}"
    with provider.get_tracer("test").start_as_current_span(
        "GET /v1/jobs",
        attributes={"http.target": target, "http.url": f"http://api{target}", "http.status": 1},
    ) as span:
        telemetry.redact_request_span(span, {})
    (finished,) = exporter.get_finished_spans()
    assert finished.attributes is not None
    assert finished.attributes["http.target"] == "/v1/jobs?api_key=sous_0123456789ab_***"
    assert finished.attributes["http.url"] == "http://api/v1/jobs?api_key=sous_0123456789ab_***"
    assert finished.attributes["http.status"] == 1


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_format_is_text_on_a_terminal_and_json_elsewhere() -> None:
    assert use_json("auto", io.StringIO())
    assert not use_json("auto", Tty())
    assert use_json("json", Tty())
    assert not use_json("text", io.StringIO())


def test_dead_processes_lose_their_live_gauges_and_keep_their_counts(tmp_path: Path) -> None:
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its pid is gone
    for name in (
        f"gauge_livesum_{child.pid}.db",
        f"counter_{child.pid}.db",
        f"gauge_livesum_{os.getpid()}.db",
    ):
        (tmp_path / name).write_bytes(b"")
    assert forget_dead_processes(tmp_path) == [child.pid]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{child.pid}.db", f"gauge_livesum_{os.getpid()}.db"]
    )


def test_tracing_is_off_by_default_and_the_console_exporter_prints_spans() -> None:
    program = (
        "from sous_core import telemetry\n"
        "on = telemetry.configure_tracing('sous-test')\n"
        "with telemetry.outbound_span('SMTP send', job_id='j-1'):\n"
        "    pass\n"
        "telemetry.shutdown_tracing()\n"
        "print('tracing', on)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    off = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True)
    assert off.stdout.strip() == "tracing False", off.stderr
    on = subprocess.run(
        [sys.executable, "-c", program],
        env={**env, "OTEL_TRACES_EXPORTER": "console"},
        capture_output=True,
        text=True,
    )
    assert on.returncode == 0, on.stderr
    span_json = on.stdout[: on.stdout.rindex("tracing True")]
    span = json.loads(span_json)
    assert span["name"] == "SMTP send"
    assert span["attributes"]["sous.job_id"] == "j-1"
    assert span["resource"]["attributes"]["service.name"] == "sous-test"
