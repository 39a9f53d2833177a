"""OpenTelemetry tracing, configured by the standard ``OTEL_*`` environment variables.

``OTEL_TRACES_EXPORTER``: ``none`` (the default: nothing is recorded), ``otlp``
(OTLP over HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``),
``console`` (spans printed to stdout), or several separated by commas.
``OTEL_SERVICE_NAME`` overrides the service name (``sous-api``, ``sous-worker-fast``, …).

A trace runs from the API's request span through the publish span (its context travels in
the task message's headers) to the worker's task span and the work's outbound calls
(ffmpeg, SMTP, HTTP fetches, webhooks), each carrying ``sous.job_id``. Prefork workers
call :func:`configure_tracing` in every pool child (``worker_process_init``): the batch
exporter's thread does not survive a fork.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from sous_core.redaction import redact

logger = logging.getLogger("sous.telemetry")

JOB_ID_ATTRIBUTE = "sous.job_id"
TRACER_NAME = "sous"
_state: dict[str, Any] = {"provider": None, "pid": None, "celery": False}


def exporters_from_environment() -> list[str]:
    value = os.environ.get("OTEL_TRACES_EXPORTER", "none")
    names = [name.strip().lower() for name in value.split(",") if name.strip()]
    return [name for name in names if name != "none"]


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    raise ValueError(f"unsupported OTEL_TRACES_EXPORTER {name!r} (use otlp, console or none)")


def configure_tracing(service: str) -> bool:
    """Install a tracer provider for this process (once per process); False when off."""
    if _state["pid"] == os.getpid():
        return _state["provider"] is not None
    _state["pid"] = os.getpid()
    names = exporters_from_environment()
    if not names:
        _state["provider"] = None
        return False
    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME") or service,
            "service.namespace": "sous",
        }
    )
    provider = TracerProvider(resource=resource)
    processors: list[SpanProcessor] = []
    for name in names:
        try:
            processors.append(BatchSpanProcessor(_exporter(name)))
        except ValueError as exc:
            logger.error("%s", exc)
    for processor in processors:
        provider.add_span_processor(processor)
    _set_provider(provider)
    _state["provider"] = provider
    logger.info("tracing on: exporting spans with %s", ", ".join(names))
    return True


def _set_provider(provider: TracerProvider) -> None:
    """Install ``provider`` globally; in a forked child it replaces the parent's."""
    # The API only lets the global provider be set once per process; a forked pool child
    # inherits the parent's flag but not its exporter thread, so reset it there.
    trace._TRACER_PROVIDER_SET_ONCE._done = False
    trace._TRACER_PROVIDER = None
    trace.set_tracer_provider(provider)


def instrument_celery() -> None:
    """Trace task publishing and execution, propagating context in message headers."""
    if _state["provider"] is None or _state["celery"]:
        return
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().instrument(tracer_provider=_state["provider"])
    _state["celery"] = True


def shutdown_tracing() -> None:
    """Flush the spans still buffered (call before a process exits)."""
    provider = _state["provider"]
    if provider is not None and _state["pid"] == os.getpid():
        provider.shutdown()


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


@contextmanager
def outbound_span(
    name: str, job_id: uuid.UUID | str | None = None, **attributes: Any
) -> Iterator[Span]:
    """A client span around an outbound call (ffmpeg, SMTP, HTTP), errors recorded on it."""
    with tracer().start_as_current_span(
        name, kind=SpanKind.CLIENT, record_exception=True, set_status_on_exception=True
    ) as span:
        if span.is_recording():
            if job_id is not None:
                span.set_attribute(JOB_ID_ATTRIBUTE, str(job_id))
            for key, value in attributes.items():
                if value is not None:
                    span.set_attribute(key, value)
        yield span


def redact_request_span(span: Span, _scope: dict[str, Any]) -> None:
    """``server_request_hook`` of the API's instrumentation: mask API keys in the request
    span's attributes (``http.url``, ``http.target``, ``url.query``: a key put in the URL)."""
    attributes = getattr(span, "attributes", None)
    if not span.is_recording() or not attributes:
        return
    masked = {
        key: redact(value)
        for key, value in dict(attributes).items()
        if isinstance(value, str) and redact(value) != value
    }
    if masked:
        span.set_attributes(masked)


def mark_job(job_id: uuid.UUID | str) -> None:
    """Put the job id on the current span (the task's run span, the API's request span)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(JOB_ID_ATTRIBUTE, str(job_id))


def mark_error(span: Span, message: str) -> None:
    if span.is_recording():
        span.set_status(Status(StatusCode.ERROR, message))


def current_trace_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` in hex of the current span, for log lines."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
