"""Queue depth as the broker sees it: ready and unacknowledged messages per queue."""

from __future__ import annotations

import json
import logging
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from kombu import Connection
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sous_core.metrics import QUEUE_METRICS
from sous_core.queues import DEAD_LETTER_QUEUE, WORK_QUEUES

logger = logging.getLogger("sous.brokerstats")

MANAGEMENT_PORT = 15672


@dataclass(frozen=True)
class QueueStats:
    name: str
    ready: int | None
    unacked: int | None
    consumers: int | None


def management_url_for(broker_url: str) -> str:
    """The management API that usually sits beside an AMQP broker (same host and user)."""
    parts = urllib.parse.urlsplit(broker_url)
    netloc = f"{parts.username or 'guest'}:{parts.password or 'guest'}@{parts.hostname}"
    return f"http://{netloc}:{MANAGEMENT_PORT}"


def vhost_of(broker_url: str) -> str:
    path = urllib.parse.urlsplit(broker_url).path
    vhost = urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"
    return vhost or "/"


def from_management_api(
    management_url: str, vhost: str, names: tuple[str, ...], timeout: float = 3.0
) -> list[QueueStats]:
    """Ready, unacked and consumers of each queue from the RabbitMQ management API."""
    parts = urllib.parse.urlsplit(management_url)
    base = f"{parts.scheme}://{parts.hostname}:{parts.port or MANAGEMENT_PORT}{parts.path}"
    password_manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    password_manager.add_password(
        None,
        base,
        urllib.parse.unquote(parts.username or ""),
        urllib.parse.unquote(parts.password or ""),
    )
    opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(password_manager))
    url = f"{base.rstrip('/')}/api/queues/{urllib.parse.quote(vhost, safe='')}"
    with opener.open(url, timeout=timeout) as response:
        queues = {queue["name"]: queue for queue in json.load(response)}
    stats = []
    for name in names:
        queue = queues.get(name)
        if queue is None:
            stats.append(QueueStats(name, None, None, None))
            continue
        stats.append(
            QueueStats(
                name,
                ready=queue.get("messages_ready", 0),
                unacked=queue.get("messages_unacknowledged", 0),
                consumers=queue.get("consumers", 0),
            )
        )
    return stats


def from_amqp(broker_url: str, names: tuple[str, ...]) -> list[QueueStats]:
    """Ready messages and consumers over AMQP (a passive declare cannot see unacked ones)."""
    stats = []
    with Connection(broker_url, connect_timeout=3) as connection:
        for name in names:
            channel = connection.channel()
            try:
                _, ready, consumers = channel.queue_declare(name, passive=True)
                stats.append(QueueStats(name, ready, None, consumers))
            except Exception:
                stats.append(QueueStats(name, None, None, None))
            finally:
                channel.close()
    return stats


def queue_stats(broker_url: str, management_url: str = "") -> tuple[list[QueueStats], str]:
    """Stats of Sous's queues and which source answered (``management`` or ``amqp``)."""
    names = (*WORK_QUEUES, DEAD_LETTER_QUEUE)
    try:
        return from_management_api(
            management_url or management_url_for(broker_url), vhost_of(broker_url), names
        ), "management"
    except OSError:
        return from_amqp(broker_url, names), "amqp"


class BrokerQueueCollector(Collector):
    """Queue depth per queue, read from the broker at scrape time (what KEDA scales on).

    Served by the scheduler: one per installation, so dashboards do not sum copies.
    Over AMQP only ready messages and consumers are visible; unacked counts need the
    management API (``SOUS_RABBITMQ_MANAGEMENT_URL``, or the broker host's port 15672).
    """

    def __init__(self, broker_url: str, management_url: str = "") -> None:
        self.broker_url = broker_url
        self.management_url = management_url

    def collect(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily(
            "celery_queue_length", QUEUE_METRICS["celery_queue_length"], labels=["queue_name"]
        )
        unacked = GaugeMetricFamily(
            "sous_queue_unacked_messages",
            QUEUE_METRICS["sous_queue_unacked_messages"],
            labels=["queue_name"],
        )
        consumers = GaugeMetricFamily(
            "celery_active_consumer_count",
            QUEUE_METRICS["celery_active_consumer_count"],
            labels=["queue_name"],
        )
        try:
            stats, _source = queue_stats(self.broker_url, self.management_url)
            up = 1.0
        except Exception as exc:
            logger.warning("reading queue depth from the broker failed: %r", exc)
            stats, up = [], 0.0
        for queue in stats:
            for family, value in (
                (ready, queue.ready),
                (unacked, queue.unacked),
                (consumers, queue.consumers),
            ):
                if value is not None:
                    family.add_metric([queue.name], float(value))
        yield from (ready, unacked, consumers)
        yield GaugeMetricFamily("sous_queue_stats_up", QUEUE_METRICS["sous_queue_stats_up"], up)
