"""Tests for fetch_url, HostLimiter and post_json against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from sous_core.errors import JobCancelled, JobError, PermanentJobError, TransientJobError
from sous_core.netguard import parse_networks
from sous_fetch.fetching import (
    WEBHOOK_USER_AGENT,
    FetchLimits,
    HostLimiter,
    fetch_url,
    post_json,
)

BODY = b"hello from sous\n"
BIG_BODY = bytes(range(256)) * 200  # 51,200 bytes: several reads, fits the socket buffer
ALLOW_LOCAL = parse_networks("127.0.0.0/8, ::1")
LIMITS = FetchLimits(timeout_seconds=2.0)
REDIRECT_BODY = b"moved, see Location\n"
DRIP_SECONDS = 10.0
DRIP_INTERVAL = 0.3
HOLD_SECONDS = 0.3
EXTRA_HEADERS = {
    "ETag": '"v1"',
    "Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT",
    "Cache-Control": "max-age=60",
    "Content-Disposition": 'attachment; filename="hello.txt"',
    "X-Not-Kept": "1",
}


class _Server(ThreadingHTTPServer):
    # Join handler threads on close so no test leaves a thread running.
    daemon_threads = False
    # Room for every concurrent test fetch to connect at once.
    request_queue_size = 64

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.headers_seen: list[dict[str, str]] = []
        self.bodies_seen: list[bytes] = []
        self.closing = threading.Event()
        # Requests to /hold being answered, per Host header, and the most seen at once.
        self.lock = threading.Lock()
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()
        self.max_in_flight_total = 0

    def hold(self, host: str) -> None:
        with self.lock:
            self.in_flight[host] += 1
            self.max_in_flight[host] = max(self.max_in_flight[host], self.in_flight[host])
            self.max_in_flight_total = max(self.max_in_flight_total, self.in_flight.total())
        try:
            self.closing.wait(HOLD_SECONDS)
        finally:
            with self.lock:
                self.in_flight[host] -= 1


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
                # Relative on purpose; the body must not reach a body sink.
                self._reply(302, REDIRECT_BODY, location=f"/redirect/{hops - 1}")
            else:
                self._reply(200, BODY)
        elif parts[0] == "to":
            self._reply(302, location=parse_qs(url.query)["url"][0])
        elif parts[0] == "status":
            self._reply(int(parts[1]), b"nope")
        elif parts[0] == "slow":
            # Never answer; the client times out and teardown releases this thread.
            self.server.closing.wait(5)
        elif parts[0] == "drip":
            self._drip()
        elif parts[0] == "hold":
            self.server.hold(self.headers["Host"].rsplit(":", 1)[0])
            self._reply(200, BODY)
        elif parts[0] == "headers":
            self._reply(200, BODY, content_type="text/plain", extra=EXTRA_HEADERS)
        else:
            self._reply(404)

    def do_POST(self) -> None:
        self.server.headers_seen.append(dict(self.headers.items()))
        self.server.bodies_seen.append(self.rfile.read(int(self.headers["Content-Length"])))
        parts = urlsplit(self.path).path.strip("/").split("/")
        if parts[0] == "status":
            status = int(parts[1])
            self._reply(status, b"see other", location=_url(self.server, "/elsewhere"))
        elif parts[0] == "big":
            self._reply(200, BIG_BODY * 20)
        else:
            self._reply(200, "é".encode() * 300, content_type="text/plain; charset=utf-8")

    def _drip(self) -> None:
        """Send headers, then one body byte every DRIP_INTERVAL for DRIP_SECONDS."""
        self.send_response(200)
        self.send_header("Content-Length", str(int(DRIP_SECONDS / DRIP_INTERVAL)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(int(DRIP_SECONDS / DRIP_INTERVAL)):
                if self.server.closing.wait(DRIP_INTERVAL):
                    return
                self.wfile.write(b"x")

    def _reply(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str = "application/octet-stream",
        location: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if location is not None:
            self.send_header("Location", location)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
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


def _url(srv: ThreadingHTTPServer, path: str, host: str = "127.0.0.1") -> str:
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


def test_success_records_the_headers_of_interest(server: _Server) -> None:
    outcome = fetch_url(_url(server, "/headers"), limits=LIMITS, allow_networks=ALLOW_LOCAL)
    assert outcome.headers == {
        "content-type": "text/plain",
        "content-length": str(len(BODY)),
        "etag": '"v1"',
        "last-modified": "Wed, 21 Oct 2015 07:28:00 GMT",
        "cache-control": "max-age=60",
        "content-disposition": 'attachment; filename="hello.txt"',
        "server": outcome.headers["server"],  # BaseHTTPRequestHandler's, version-dependent
    }
    assert outcome.headers["server"].startswith("BaseHTTP/")
    assert outcome.as_result()["headers"] == outcome.headers


# --- overall deadline


def test_drip_feeding_server_cannot_outlast_the_total_deadline(server: _Server) -> None:
    limits = FetchLimits(timeout_seconds=2.0, total_timeout_seconds=1.5)
    url = _url(server, "/drip")
    started = time.monotonic()
    with pytest.raises(TransientJobError) as info:
        fetch_url(url, limits=limits, allow_networks=ALLOW_LOCAL)
    assert time.monotonic() - started < DRIP_SECONDS
    assert info.value.code == "timeout"
    assert info.value.message == f"GET {url} took longer than 1.5 seconds in all"


def test_total_deadline_caps_the_hop_timeout(server: _Server) -> None:
    limits = FetchLimits(timeout_seconds=5.0, total_timeout_seconds=0.3)
    with pytest.raises(TransientJobError) as info:
        fetch_url(_url(server, "/slow"), limits=limits, allow_networks=ALLOW_LOCAL)
    assert info.value.code == "timeout"
    assert "took longer than 0.3 seconds in all" in info.value.message


def test_waiting_for_a_host_slot_does_not_count_against_the_deadline(server: _Server) -> None:
    limiter = HostLimiter(per_host=1)
    holding = threading.Event()

    def hold_the_only_slot() -> None:
        with limiter.slot("127.0.0.1"):
            holding.set()
            time.sleep(0.6)

    holder = threading.Thread(target=hold_the_only_slot)
    holder.start()
    try:
        holding.wait()
        limits = FetchLimits(timeout_seconds=2.0, total_timeout_seconds=0.4)
        outcome = fetch_url(
            _url(server, "/body"), limits=limits, allow_networks=ALLOW_LOCAL, limiter=limiter
        )
    finally:
        holder.join()
    assert outcome.size_bytes == len(BODY)


# --- per-host concurrency


def _fetch_all(urls: list[str], limiter: HostLimiter) -> list[BaseException]:
    """Fetch every URL in its own thread at once; the errors raised."""
    errors: list[BaseException] = []

    def fetch(url: str) -> None:
        try:
            fetch_url(url, limits=LIMITS, allow_networks=ALLOW_LOCAL, limiter=limiter)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetch, args=(url,)) for url in urls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_host_limiter_caps_concurrent_fetches_to_one_host(server: _Server) -> None:
    limiter = HostLimiter(per_host=3)
    assert _fetch_all([_url(server, "/hold")] * 12, limiter) == []
    assert len(server.headers_seen) == 12
    assert 2 <= server.max_in_flight["127.0.0.1"] <= 3
    assert len(limiter) == 0


def test_host_limiter_counts_each_host_name_separately(server: _Server) -> None:
    limiter = HostLimiter(per_host=3)
    urls = [_url(server, "/hold", host=host) for host in ("127.0.0.1", "localhost")] * 6
    assert _fetch_all(urls, limiter) == []
    assert server.max_in_flight["127.0.0.1"] <= 3
    assert server.max_in_flight["localhost"] <= 3
    # Same server and address, yet more than one host's share ran at once.
    assert server.max_in_flight_total > 3
    assert len(limiter) == 0


def test_fetch_waiting_for_a_host_slot_can_be_cancelled(server: _Server) -> None:
    limiter = HostLimiter(per_host=1)
    calls = itertools.count()

    def should_stop() -> bool:
        # False for the check before waiting, True at the first check while waiting.
        return next(calls) >= 1

    with limiter.slot("127.0.0.1"):
        with pytest.raises(JobCancelled):
            fetch_url(
                _url(server, "/body"),
                limits=LIMITS,
                allow_networks=ALLOW_LOCAL,
                should_stop=should_stop,
                limiter=limiter,
            )
        assert len(limiter) == 1
    assert len(limiter) == 0
    assert server.headers_seen == []


def test_host_limiter_keys_on_the_lower_cased_name_and_releases_on_error() -> None:
    limiter = HostLimiter(per_host=1)
    hosts_while_held: list[int] = []

    def fail_while_holding() -> None:
        with limiter.slot("Example.COM"):
            hosts_while_held.append(len(limiter))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail_while_holding()
    assert hosts_while_held == [1]
    assert len(limiter) == 0
    with limiter.slot("example.com"):
        # The slot is taken under the other spelling, so this waits and then gives up.
        with pytest.raises(JobCancelled), limiter.slot("EXAMPLE.com", lambda: True):
            pass
        with limiter.slot("other.example"):
            assert len(limiter) == 2
    assert len(limiter) == 0


def test_host_limiter_needs_at_least_one_slot() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        HostLimiter(per_host=0)


# --- body sink


def test_body_sink_receives_the_body(server: _Server) -> None:
    sink = io.BytesIO()
    outcome = fetch_url(
        _url(server, "/big"), limits=LIMITS, allow_networks=ALLOW_LOCAL, body_sink=sink
    )
    assert sink.getvalue() == BIG_BODY
    assert outcome.sha256 == hashlib.sha256(sink.getvalue()).hexdigest()


def test_body_sink_stops_at_the_size_cap(server: _Server) -> None:
    sink = io.BytesIO()
    limits = FetchLimits(timeout_seconds=2.0, max_bytes=1000)
    fetch_url(_url(server, "/big"), limits=limits, allow_networks=ALLOW_LOCAL, body_sink=sink)
    assert sink.getvalue() == BIG_BODY[:1000]


def test_body_sink_gets_only_the_final_hop(server: _Server) -> None:
    sink = io.BytesIO()
    outcome = fetch_url(
        _url(server, "/redirect/2"), limits=LIMITS, allow_networks=ALLOW_LOCAL, body_sink=sink
    )
    assert len(outcome.redirects) == 2
    assert sink.getvalue() == BODY


# --- post_json


def test_post_json_sends_the_exact_body_and_headers(server: _Server) -> None:
    body = b'{"id": "job-1", "state": "succeeded"}'
    outcome = post_json(
        _url(server, "/hook", host="localhost"),
        body,
        headers={"Sous-Signature": "sha256=abc"},
        timeout_seconds=2.0,
        allow_networks=ALLOW_LOCAL,
    )
    assert outcome.status_code == 200
    assert outcome.response_excerpt == "é" * 200
    assert outcome.elapsed_seconds >= 0
    assert server.bodies_seen == [body]
    (headers,) = server.headers_seen
    assert headers["Host"] == f"localhost:{server.server_address[1]}"
    assert headers["Content-Type"] == "application/json"
    assert headers["Content-Length"] == str(len(body))
    assert headers["User-Agent"] == WEBHOOK_USER_AGENT
    assert headers["Connection"] == "close"
    assert headers["Accept-Encoding"] == "identity"
    assert headers["Sous-Signature"] == "sha256=abc"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_post_json_returns_redirects_without_following_them(server: _Server, status: int) -> None:
    outcome = post_json(
        _url(server, f"/status/{status}"),
        b"{}",
        headers={},
        timeout_seconds=2.0,
        allow_networks=ALLOW_LOCAL,
    )
    assert outcome.status_code == status
    assert outcome.response_excerpt == "see other"
    assert len(server.headers_seen) == 1


def test_post_json_returns_error_statuses(server: _Server) -> None:
    outcome = post_json(
        _url(server, "/status/500"),
        b"{}",
        headers={},
        timeout_seconds=2.0,
        allow_networks=ALLOW_LOCAL,
    )
    assert outcome.status_code == 500


def test_post_json_reads_a_large_response_only_in_part(server: _Server) -> None:
    outcome = post_json(
        _url(server, "/big"), b"{}", headers={}, timeout_seconds=2.0, allow_networks=ALLOW_LOCAL
    )
    assert outcome.status_code == 200
    assert len(outcome.response_excerpt) == 200


def test_post_json_refuses_blocked_addresses_without_connecting(server: _Server) -> None:
    url = _url(server, "/hook")
    with pytest.raises(PermanentJobError) as info:
        post_json(url, b"{}", headers={}, timeout_seconds=2.0, allow_networks=())
    assert info.value.code == "url_blocked"
    assert "127.0.0.1, a loopback address" in info.value.message
    assert server.headers_seen == []


def test_post_json_connection_refused_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hook"
    with pytest.raises(TransientJobError) as info:
        post_json(url, b"{}", headers={}, timeout_seconds=2.0, allow_networks=ALLOW_LOCAL)
    assert info.value.code == "connect_error"
    assert info.value.message.startswith(f"POST {url} could not connect")


def test_post_json_times_out(server: _Server) -> None:
    # /slow is a GET route; a POST to it answers at once, so use a raw silent listener.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
        with pytest.raises(TransientJobError) as info:
            post_json(url, b"{}", headers={}, timeout_seconds=0.2, allow_networks=ALLOW_LOCAL)
    assert info.value.code == "timeout"
    assert info.value.message == f"POST {url} timed out after 0.2 seconds"


@pytest.mark.parametrize("name", ["Host", "content-type", "User-Agent", "Content-Length"])
def test_post_json_refuses_headers_it_sets_itself(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        post_json(
            "http://127.0.0.1:9/",
            b"{}",
            headers={name: "x"},
            timeout_seconds=2.0,
            allow_networks=ALLOW_LOCAL,
        )
