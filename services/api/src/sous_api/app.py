"""The FastAPI application: routers, error handlers and the shared Celery app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from sous_api import metrics
from sous_api.auth_cache import PrincipalCache
from sous_api.body_limit import BodySizeLimit
from sous_api.errors import install_error_handlers
from sous_api.queued_marks import QueuedMarker
from sous_api.rate_limit import RateLimiter
from sous_api.request_metrics import RequestMetrics
from sous_api.routes import emails, events, fetches, health, jobs, schedules, transcodes
from sous_api.security_headers import SecurityHeaders
from sous_api.submission_batches import SubmissionBatcher
from sous_core import heap, telemetry
from sous_core.celery_app import create_celery_app
from sous_core.celery_metrics import install_publisher_metrics
from sous_core.logs import configure_logging
from sous_core.settings import get_settings

DESCRIPTION = """Sous runs slow work in the background: submit a job, get its id at once
(`202 Accepted` + `Location`), then follow it at `GET /v1/jobs/{id}`.

Authenticate with `Authorization: Bearer <API key>` (`sous keys create --tenant NAME`)."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    app.state.celery = create_celery_app("sous-api", publisher_confirms=True)
    app.state.rate_limiter = RateLimiter.from_settings(settings)
    app.state.principal_cache = PrincipalCache(settings.auth_cache_seconds)
    app.state.queued_marker = QueuedMarker()
    app.state.submission_batcher = SubmissionBatcher(app.state.celery)
    # One request thread per database connection: more threads would only queue on the pool.
    to_thread.current_default_thread_limiter().total_tokens = settings.database_pool_size
    heap.freeze_startup_objects()
    yield
    app.state.submission_batcher.close()
    app.state.celery.pool.force_close_all()
    if app.state.rate_limiter is not None:
        await app.state.rate_limiter.close()


def create_app() -> FastAPI:
    settings = get_settings()
    if not logging.getLogger().handlers:
        # A uvicorn worker process started by `sous-api --workers N` logs like its parent.
        configure_logging("sous-api")
    app = FastAPI(title="Sous", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_request_bytes,
        upload_paths={transcodes.router.prefix},
    )
    if settings.cors_origin_list:
        # Keys travel in the Authorization header, never in cookies: no credentials mode.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["Location", "Retry-After", "Idempotent-Replayed"],
        )
    app.add_middleware(SecurityHeaders)
    # Outermost: a request refused by the body limit is counted too.
    app.add_middleware(RequestMetrics)
    install_publisher_metrics()
    if telemetry.configure_tracing("sous-api"):
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app,
            excluded_urls="healthz,readyz,metrics",
            server_request_hook=telemetry.redact_request_span,
        )
        telemetry.instrument_celery()
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(fetches.router)
    app.include_router(emails.router)
    app.include_router(jobs.router)
    app.include_router(events.router)
    app.include_router(transcodes.router)
    app.include_router(transcodes.presets_router)
    app.include_router(schedules.router)
    return app
