"""The end-to-end benchmark's submitter (``bench/submitter.py``) against a local HTTP server.

It replaced httpx there because httpx was the ceiling; these tests check it still counts
every answer and that a request whose connection breaks is sent again with the same
``Idempotency-Key`` (so Sous makes no second job).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from submitter import post_all


class Server:
    """Answers each POST with ``status`` (202 unless its body says otherwise); drops the
    connection, unanswered, on the first request for each ``drop`` body number."""

    def __init__(
        self, drop: set[int] = frozenset(), close_after: int = 0, drop_always: bool = False
    ) -> None:
        self.drop = set(drop)
        self.drop_always = drop_always
        self.close_after = close_after
        self.keys: dict[int, list[str]] = {}
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                assert lines[0].startswith("POST /jobs HTTP/1.1"), lines[0]
                headers = dict(line.split(": ", 1) for line in lines[1:] if line)
                body = json.loads(await reader.readexactly(int(headers["Content-Length"])))
                n = body["n"]
                self.keys.setdefault(n, []).append(headers["Idempotency-Key"])
                assert headers["Authorization"] == "Bearer secret"
                if self.drop_always or n in self.drop:
                    self.drop.discard(n)
                    return  # the connection closes with no answer
                status = body.get("status", 202)
                payload = json.dumps({"n": n}).encode()
                served += 1
                closing = self.close_after and served == self.close_after
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Length: {len(payload)}\r\n"
                    f"Content-Type: application/json\r\n"
                    f"{'Connection: close' + chr(13) + chr(10) if closing else ''}\r\n".encode()
                    + payload
                )
                await writer.drain()
                if closing:
                    return
        except asyncio.IncompleteReadError:
            return
        finally:
            writer.close()


def run(server: Server, bodies: list[dict], connections: int):
    async def main():
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        async with listener:
            return await post_all(
                f"http://127.0.0.1:{port}", "/jobs", bodies, connections,
                {"Authorization": "Bearer secret"},
            )  # fmt: skip

    return asyncio.run(main())


def test_every_body_is_posted_once_over_kept_connections() -> None:
    server = Server()
    sent = run(server, [{"n": n} for n in range(200)], connections=5)
    assert sent.statuses == Counter({202: 200})
    assert sent.retried == 0
    assert sent.errors == []
    assert sorted(server.keys) == list(range(200))
    assert all(len(keys) == 1 for keys in server.keys.values())
    assert len({keys[0] for keys in server.keys.values()}) == 200  # a key per request
    assert server.connections == 5  # keep-alive: one connection each, reused


def test_a_request_whose_connection_breaks_is_sent_again_with_its_key() -> None:
    server = Server(drop={3, 17})
    sent = run(server, [{"n": n} for n in range(40)], connections=4)
    assert sent.statuses == Counter({202: 40})
    assert sent.retried == 2
    for n in (3, 17):
        first, again = server.keys[n]
        assert first == again  # the same Idempotency-Key: Sous answers it as a replay
    assert server.connections == 4 + 2  # a new connection for each retry


def test_connection_close_answers_reconnect_and_other_statuses_are_reported() -> None:
    server = Server(close_after=3)
    bodies = [{"n": n, **({"status": 429} if n % 10 == 0 else {})} for n in range(30)]
    sent = run(server, bodies, connections=1)
    assert sent.statuses == Counter({202: 27, 429: 3})
    assert sent.retried == 0
    assert len(sent.errors) == 3
    assert all(e.startswith("429 ") for e in sent.errors)
    assert server.connections == 10  # the server closed it after every third answer


def test_a_request_that_keeps_failing_raises() -> None:
    server = Server(drop_always=True)
    with pytest.raises(RuntimeError, match="connection failed"):
        run(server, [{"n": 0}], connections=1)
    assert len(server.keys[0]) == 3  # the first attempt and two retries, one key
    assert len(set(server.keys[0])) == 1
