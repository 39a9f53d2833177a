"""Queue depth as the broker sees it: ready and unacknowledged messages per queue."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from dataclasses import dataclass

from kombu import Connection

from sous_core.queues import DEAD_LETTER_QUEUE, WORK_QUEUES

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
