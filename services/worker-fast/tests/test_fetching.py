"""Tests for fetch_url against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from sous_core.errors import JobCancelled, JobError, PermanentJobError, TransientJobError
from sous_core.netguard import parse_networks
from sous_worker_fast.fetching import FetchLimits, fetch_url

BODY = b"hello from sous\n"
BIG_BODY = bytes(range(256)) * 200  # 51,200 bytes: several reads, fits the socket buffer
ALLOW_LOCAL = parse_networks("127.0.0.0/8, ::1")
LIMITS = FetchLimits(timeout_seconds=2.0)


class _Server(ThreadingHTTPServer):
    # Join handler threads on close so no test leaves a thread running.
    daemon_threads = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.headers_seen: list[dict[str, str]] = []
        self.closing = threading.Event()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.headers_seen.append(dict(self.headers.items()))
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if parts[0] == "body":
            self._reply(200, BODY, content_type="text/plain; charset=utf-8")
        elif parts[0] == "big":
            self._reply(200, BIG_BODY)
        elif parts[0] == "redirect":
            hops = int(parts[1])
            if hops:
                self._reply(302, location=f"/redirect/{hops - 1}")  # relative on purpose
            else:
                self._reply(200, BODY)
        elif parts[0] == "to":
            self._reply(302, location=parse_qs(url.query)["url"][0])
        elif parts[0] == "status":
            self._reply(int(parts[1]), b"nope")
        elif parts[0] == "slow":
            # Never answer; the client times out and teardown releases this thread.
            self.server.closing.wait(5)
        else:
            self._reply(404)

    def _reply(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str = "application/octet-stream",
        location: str | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if location is not None:
            self.send_header("Location", location)
        self.end_headers()
        # The client may stop reading early (size cap), as intended.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv
    finally:
        srv.closing.set()
        srv.shutdown()
        srv.server_close()
        thread.join()


def _url(srv: _Server, path: str, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{srv.server_address[1]}{path}"


def test_success_reports_hash_size_status_and_type(server: _Server) -> None:
    url = _url(server, "/body")
    outcome = fetch_url(url, limits=LIMITS, allow_networks=ALLOW_LOCAL)
    assert outcome.url == url
    assert outcome.final_url == url
    assert outcome.status_code == 200
    assert outcome.content_type == "text/plain; charset=utf-8"
    assert outcome.size_bytes == len(BODY)
    assert outcome.sha256 == hashlib.sha256(BODY).hexdigest()
    assert outcome.redirects == []
    assert outcome.truncated is False
    assert 0 <= outcome.elapsed_seconds < 2
    assert outcome.as_result()["sha256"] == outcome.sha256


def test_connects_to_the_ip_but_keeps_the_original_host_header(server: _Server) -> None:
    url = _url(server, "/body", host="localhost")
    outcome = fetch_url(url, limits=LIMITS, allow_networks=ALLOW_LOCAL)
    assert outcome.final_url == url
    (headers,) = server.headers_seen
    assert headers["Host"] == f"localhost:{server.server_address[1]}"
    assert headers["User-Agent"] == LIMITS.user_agent
    assert headers["Accept-Encoding"] == "identity"


def test_loopback_is_blocked_without_allow_list(server: _Server) -> None:
    with pytest.raises(PermanentJobError) as info:
        fetch_url(_url(server, "/body"), limits=LIMITS, allow_networks=())
    assert info.value.code == "url_blocked"
    assert "127.0.0.1, a loopback address" in info.value.message
    assert server.headers_seen == []


def test_redirect_chain_within_limit_is_followed(server: _Server) -> None:
    limits = FetchLimits(timeout_seconds=2.0, max_redirects=3)
    outcome = fetch_url(_url(server, "/redirect/3"), limits=limits, allow_networks=ALLOW_LOCAL)
    assert outcome.redirects == [_url(server, f"/redirect/{n}") for n in (2, 1, 0)]
    assert outcome.final_url == _url(server, "/redirect/0")
    assert outcome.sha256 == hashlib.sha256(BODY).hexdigest()


def test_too_many_redirects(server: _Server) -> None:
    limits = FetchLimits(timeout_seconds=2.0, max_redirects=2)
    with pytest.raises(PermanentJobError) as info:
        fetch_url(_url(server, "/redirect/3"), limits=limits, allow_networks=ALLOW_LOCAL)
    assert info.value.code == "too_many_redirects"


def test_redirect_to_a_blocked_address_is_checked_again(server: _Server) -> None:
    target = _url(server, "/body", host="127.0.0.2")
    with pytest.raises(PermanentJobError) as info:
        fetch_url(
            _url(server, f"/to?url={target}"),
            limits=LIMITS,
            allow_networks=parse_networks("127.0.0.1/32"),
        )
    assert info.value.code == "url_blocked"
    assert "127.0.0.2, a loopback address" in info.value.message
    assert len(server.headers_seen) == 1


@pytest.mark.parametrize(
    ("max_bytes", "truncated"), [(1000, True), (len(BIG_BODY), False), (0, True)]
)
def test_size_cap_truncates_and_hashes_exactly_the_bytes_read(
    server: _Server, max_bytes: int, truncated: bool
) -> None:
    limits = FetchLimits(timeout_seconds=2.0, max_bytes=max_bytes)
    outcome = fetch_url(_url(server, "/big"), limits=limits, allow_networks=ALLOW_LOCAL)
    assert outcome.truncated is truncated
    assert outcome.size_bytes == max_bytes
    assert outcome.sha256 == hashlib.sha256(BIG_BODY[:max_bytes]).hexdigest()


@pytest.mark.parametrize(
    ("status", "error", "text"),
    [
        (404, PermanentJobError, "answered 404 Not Found"),
        (403, PermanentJobError, "answered 403 Forbidden"),
        (429, TransientJobError, "answered 429 Too Many Requests"),
        (503, TransientJobError, "answered 503 Service Unavailable"),
    ],
)
def test_http_error_statuses(
    server: _Server, status: int, error: type[JobError], text: str
) -> None:
    url = _url(server, f"/status/{status}")
    with pytest.raises(error) as info:
        fetch_url(url, limits=LIMITS, allow_networks=ALLOW_LOCAL)
    assert type(info.value) is error
    assert info.value.code == "http_error"
    assert info.value.message == f"GET {url} {text}"


def test_connection_refused_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(TransientJobError) as info:
        fetch_url(url, limits=LIMITS, allow_networks=ALLOW_LOCAL)
    assert info.value.code == "connect_error"
    assert url in info.value.message


def test_slow_server_times_out(server: _Server) -> None:
    limits = FetchLimits(timeout_seconds=0.2)
    with pytest.raises(TransientJobError) as info:
        fetch_url(_url(server, "/slow"), limits=limits, allow_networks=ALLOW_LOCAL)
    assert info.value.code == "timeout"
    assert "timed out after 0.2 seconds" in info.value.message


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/file",
        "file:///etc/passwd",
        "http://user:secret@example.com/",
        "http:///no-host",
        "example.com/no-scheme",
    ],
)
def test_invalid_urls_are_rejected(url: str) -> None:
    with pytest.raises(PermanentJobError) as info:
        fetch_url(url, limits=LIMITS, allow_networks=ALLOW_LOCAL)
    assert info.value.code == "invalid_url"
    assert url in info.value.message


def test_should_stop_cancels_before_the_request(server: _Server) -> None:
    with pytest.raises(JobCancelled):
        fetch_url(
            _url(server, "/big"),
            limits=LIMITS,
            allow_networks=ALLOW_LOCAL,
            should_stop=lambda: True,
        )
    assert server.headers_seen == []


def test_should_stop_cancels_while_reading_the_body(server: _Server) -> None:
    # False until the server has the request, so the stop lands between body chunks.
    with pytest.raises(JobCancelled):
        fetch_url(
            _url(server, "/big"),
            limits=LIMITS,
            allow_networks=ALLOW_LOCAL,
            should_stop=lambda: bool(server.headers_seen),
        )
    assert len(server.headers_seen) == 1
