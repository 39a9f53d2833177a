"""Submitting jobs as fast as an API takes them: a minimal HTTP/1.1 keep-alive client.

The end-to-end benchmark times "submit the first job → every job finished". With a
general-purpose async client (httpx) the client was the ceiling on both sides, about 100
requests a second on a 2-core machine, so the benchmark measured the client. This one
writes each request's bytes once and reads back only the status line, the headers it
needs and the body: its own CPU per request is a small fraction of the API's.

Every request carries its own ``Idempotency-Key`` (ignored by the baseline). A request
whose connection breaks before the answer is sent again, byte for byte, on a new
connection: the same key, so Sous answers it as a replay and never makes a second job.
The baseline has no such key; a retry there can queue a task twice, and the retries are
counted so the report shows it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

RETRIES = 2


@dataclass
class Submitted:
    """What one submission run did: answers by status, requests retried, its duration."""

    statuses: Counter[int] = field(default_factory=Counter)
    retried: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def request_bytes(host: str, path: str, body: dict, headers: dict[str, str]) -> bytes:
    """One POST with a JSON body and a fresh ``Idempotency-Key``."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        f"Idempotency-Key: {secrets.token_hex(16)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body and whether the server will close the connection after it."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    length, closing = 0, False
    for line in header_lines:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection":
            closing = value == "close"
        elif name == "transfer-encoding":
            raise RuntimeError(f"unexpected Transfer-Encoding {value!r}: only Content-Length")
    return status, await reader.readexactly(length), closing


async def post_all(
    url: str,
    path: str,
    bodies: list[dict],
    connections: int,
    headers: dict[str, str] | None = None,
) -> Submitted:
    """POST every body over ``connections`` keep-alive connections; answers are counted.

    Any answer other than 202 is counted and its first few kept in ``errors``; a broken
    connection is retried (``RETRIES`` times per request) on a new one.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    pending = [request_bytes(parts.netloc, path, body, headers or {}) for body in bodies]
    pending.reverse()  # pop() from the end takes them in order
    result = Submitted()

    async def connection() -> None:
        reader = writer = None
        while pending:
            request = pending.pop()
            for attempt in range(RETRIES + 1):
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, port)
                    assert reader is not None
                    writer.write(request)
                    status, body, closing = await read_response(reader)
                    break
                except (ConnectionError, asyncio.IncompleteReadError) as error:
                    if writer is not None:
                        writer.close()
                    reader = writer = None
                    if attempt == RETRIES:
                        raise RuntimeError(f"{url}{path}: connection failed: {error}") from error
                    result.retried += 1
            result.statuses[status] += 1
            if status != 202 and len(result.errors) < 5:
                result.errors.append(f"{status} {body[:300].decode(errors='replace')}")
            if closing and writer is not None:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    result.seconds = time.perf_counter() - started
    return result
