"""``GET /metrics``: the API's Prometheus metrics, plus platform gauges read at scrape time.

Requests, submissions, broker 503s and quota rejections are counted by this process (all
uvicorn processes together in multiprocess mode). Values that describe the installation
rather than this process (API keys expiring soon) are counted by a query when Prometheus
scrapes, so every API replica reports the same number.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool

from sous_core import apikeys
from sous_core.db.engine import session_factory
from sous_core.db.models import utcnow
from sous_core.metrics import API_DATABASE_METRICS
from sous_core.metrics_process import scrape
from sous_core.settings import get_settings

logger = logging.getLogger("sous.api")

router = APIRouter(tags=["operations"])


class PlatformCollector(Collector):
    """Gauges computed from the job database on each scrape."""

    def collect(self) -> Iterator[Metric]:
        warning_days = get_settings().key_expiry_warning_days
        try:
            with session_factory()() as session:
                counts = apikeys.key_counts(session, utcnow(), warning_days)
        except Exception:
            # A scrape during a database outage reports the API's other metrics.
            logger.exception("reading key counts for /metrics failed")
            return
        yield GaugeMetricFamily(
            "sous_api_keys_active", API_DATABASE_METRICS["sous_api_keys_active"], counts.active
        )
        yield GaugeMetricFamily(
            "sous_api_keys_expiring_soon",
            f"Usable API keys that expire within {warning_days} days "
            "(SOUS_KEY_EXPIRY_WARNING_DAYS).",
            counts.expiring_soon,
        )


PLATFORM = PlatformCollector()


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """Prometheus text format; meant for the cluster's Prometheus, not for tenants."""
    body = await run_in_threadpool(scrape, [PLATFORM])
    return Response(body, media_type=CONTENT_TYPE_LATEST)
