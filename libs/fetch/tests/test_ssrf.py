"""SSRF table: with no allow list, no spelling of a non-public address is ever connected to."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from sous_core.errors import PermanentJobError
from sous_core.netguard import is_public_address, parse_networks
from sous_fetch.fetching import FetchLimits, fetch_url

# A wrong answer would connect and wait for this before failing the code check.
LIMITS = FetchLimits(timeout_seconds=2.0, total_timeout_seconds=2.0)

# {p4} is a port listening on 127.0.0.1, {p6} one listening on ::1.
BLOCKED = [
    ("http://127.0.0.1:{p4}/", "url_blocked"),
    ("http://localhost:{p4}/", "url_blocked"),
    ("http://[::1]:{p6}/", "url_blocked"),
    ("http://0.0.0.0:{p4}/", "url_blocked"),
    ("http://10.0.0.1/", "url_blocked"),
    ("http://172.16.0.1/", "url_blocked"),
    ("http://192.168.1.1/", "url_blocked"),
    ("http://169.254.169.254/latest/meta-data/", "url_blocked"),
    ("http://100.64.0.1/", "url_blocked"),
    ("http://[::ffff:127.0.0.1]:{p4}/", "url_blocked"),
    ("http://[::ffff:7f00:1]:{p4}/", "url_blocked"),
    ("http://[::]:{p6}/", "url_blocked"),
    ("http://[fe80::1]/", "url_blocked"),
    ("http://[fd00::1]/", "url_blocked"),
    ("http://[64:ff9b::a9fe:a9fe]/", "url_blocked"),
    # IPv4 in forms the C resolver accepts but that are not four decimals.
    ("http://2130706433:{p4}/", "invalid_url"),
    ("http://0177.0.0.1:{p4}/", "invalid_url"),
    ("http://0x7f.0.0.1:{p4}/", "invalid_url"),
    ("http://0x7f000001:{p4}/", "invalid_url"),
    ("http://017700000001:{p4}/", "invalid_url"),
    ("http://127.1:{p4}/", "invalid_url"),
    ("http://0:{p4}/", "invalid_url"),
    ("http://127.0.0.1.:{p4}/", "invalid_url"),
    ("http://0xa9fea9fe/latest/meta-data/", "invalid_url"),
    ("http://1.2.3/", "invalid_url"),  # public-looking (1.2.0.3), refused all the same
]
REDIRECT_TARGETS = [
    "http://[::1]:{p6}/",
    "http://10.0.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://0x7f000001:{p4}/",
]


class _Listeners:
    """Listening sockets that are never accepted from: any connection is a test failure."""

    def __init__(self) -> None:
        self.v4 = socket.create_server(("127.0.0.1", 0))
        self.v6: socket.socket | None = None
        # Without IPv6 nothing can listen on ::1, which keeps the ::1 cases meaningful.
        with contextlib.suppress(OSError):
            self.v6 = socket.create_server(("::1", 0), family=socket.AF_INET6)

    def format(self, url: str) -> str:
        p4 = self.v4.getsockname()[1]
        return url.format(p4=p4, p6=p4 if self.v6 is None else self.v6.getsockname()[1])

    def connections(self) -> int:
        """How many connections arrived (accepting and closing them)."""
        count = 0
        for listener in (self.v4, self.v6):
            if listener is None:
                continue
            listener.setblocking(False)
            while True:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    break
                conn.close()
                count += 1
        return count

    def close(self) -> None:
        self.v4.close()
        if self.v6 is not None:
            self.v6.close()


@pytest.fixture
def listeners() -> Iterator[_Listeners]:
    open_listeners = _Listeners()
    try:
        yield open_listeners
    finally:
        open_listeners.close()


class _RedirectServer(ThreadingHTTPServer):
    daemon_threads = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RedirectHandler)
        self.requests = 0


class _RedirectHandler(BaseHTTPRequestHandler):
    server: _RedirectServer

    def do_GET(self) -> None:
        self.server.requests += 1
        self.send_response(302)
        self.send_header("Location", parse_qs(urlsplit(self.path).query)["url"][0])
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def origin() -> Iterator[_RedirectServer]:
    srv = _RedirectServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


def _loopback_alias() -> str | None:
    """A name besides localhost that /etc/hosts maps to a non-public address, if any."""
    try:
        lines = Path("/etc/hosts").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        address, *names = line.split("#", 1)[0].split() or ["", ""]
        try:
            public = is_public_address(address)
        except ValueError:
            continue
        names = [name for name in names if name != "localhost"]
        if names and not public:
            return names[0]
    return None


@pytest.mark.parametrize(("url", "code"), BLOCKED)
def test_non_public_address_is_refused_without_connecting(
    listeners: _Listeners, url: str, code: str
) -> None:
    url = listeners.format(url)
    with pytest.raises(PermanentJobError) as info:
        fetch_url(url, limits=LIMITS, allow_networks=())
    assert info.value.code == code
    assert url in info.value.message
    assert listeners.connections() == 0


def test_host_name_resolving_to_loopback_is_refused(listeners: _Listeners) -> None:
    name = _loopback_alias()
    if name is None:
        pytest.skip("/etc/hosts maps no name besides localhost to a non-public address")
    with pytest.raises(PermanentJobError) as info:
        fetch_url(listeners.format(f"http://{name}:{{p4}}/"), limits=LIMITS, allow_networks=())
    assert info.value.code == "url_blocked"
    assert "non-public addresses is not allowed" in info.value.message
    assert listeners.connections() == 0


@pytest.mark.parametrize("target", REDIRECT_TARGETS)
def test_redirect_from_an_allowed_origin_to_a_non_public_address_is_refused(
    listeners: _Listeners, origin: _RedirectServer, target: str
) -> None:
    target = listeners.format(target)
    with pytest.raises(PermanentJobError) as info:
        fetch_url(
            f"http://127.0.0.1:{origin.server_address[1]}/to?url={target}",
            limits=LIMITS,
            allow_networks=parse_networks("127.0.0.1/32"),
        )
    assert info.value.code in {"url_blocked", "invalid_url"}
    assert target in info.value.message
    assert origin.requests == 1
    assert listeners.connections() == 0
