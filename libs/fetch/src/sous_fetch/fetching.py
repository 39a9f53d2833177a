"""Fetch one URL safely: SSRF-checked, size-capped, redirect-limited, hashed."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeVar

import httpx

from sous_core import netguard
from sous_core.errors import JobCancelled, JobError, PermanentJobError, TransientJobError
from sous_core.settings import Settings

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_CLIENT_STATUSES = frozenset({408, 425, 429})
_DEFAULT_PORTS = {"http": 80, "https": 443}
# getaddrinfo codes meaning "this name has no address"; anything else may heal on retry.
_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
# As in the WHATWG URL standard: a host whose last label is a number is an IPv4 address.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")
#: Response headers a fetch reports in ``FetchOutcome.headers``.
KEPT_HEADERS = (
    "content-type",
    "content-length",
    "etag",
    "last-modified",
    "cache-control",
    "content-disposition",
    "server",
)
#: How often a fetch waiting for a host slot asks ``should_stop``, in seconds.
SLOT_STOP_CHECK_SECONDS = 1.0
#: User-Agent of webhook POSTs.
WEBHOOK_USER_AGENT = "Sous-Webhook/0.1"
#: Most of a webhook receiver's response that is read, in bytes.
WEBHOOK_MAX_RESPONSE_BYTES = 64 * 1024
#: Length of ``PostOutcome.response_excerpt``, in characters.
WEBHOOK_EXCERPT_CHARS = 200
# Headers post_json sets itself; a caller supplying one is a bug, not something to merge.
_WEBHOOK_OWN_HEADERS = frozenset(
    {
        "host",
        "connection",
        "content-length",
        "transfer-encoding",
        "accept-encoding",
        "content-type",
        "user-agent",
    }
)

_E = TypeVar("_E", bound=BaseException)


@dataclass(frozen=True)
class FetchLimits:
    """Bounds for one fetch."""

    #: Connect and read timeout for each hop, in seconds.
    timeout_seconds: float = 10.0
    #: Bound on the whole fetch (every hop and the body), in seconds, counted from the moment
    #: it holds its first host slot. A read already waiting may overrun it by up to
    #: ``timeout_seconds``.
    total_timeout_seconds: float = 60.0
    max_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 5
    user_agent: str = "Sous-Fetch/0.1"

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchLimits:
        """The ``SOUS_FETCH_*`` limits; callers override a field with ``dataclasses.replace``."""
        return cls(
            timeout_seconds=settings.fetch_timeout,
            total_timeout_seconds=settings.fetch_total_timeout,
            max_bytes=settings.fetch_max_bytes,
            max_redirects=settings.fetch_max_redirects,
        )


@dataclass(frozen=True)
class FetchOutcome:
    """What a successful fetch read: the body's size and hash; only a ``body_sink`` keeps it."""

    url: str
    final_url: str
    status_code: int
    content_type: str | None
    size_bytes: int
    sha256: str
    elapsed_seconds: float
    redirects: list[str]
    truncated: bool
    #: The final response's headers named in ``KEPT_HEADERS`` that it sent, lower-case keys.
    headers: dict[str, str] = field(default_factory=dict)

    def as_result(self) -> dict[str, Any]:
        """All fields as a JSON-serialisable dict (the job's stored result)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PostOutcome:
    """How a webhook receiver answered one POST."""

    status_code: int
    elapsed_seconds: float
    #: The start of the response body, decoded as UTF-8 with undecodable bytes replaced.
    response_excerpt: str


@dataclass
class _HostSlots:
    wakeup: threading.Condition
    running: int = 0
    #: Fetches running or waiting; the entry is dropped when this reaches 0.
    users: int = 0


class HostLimiter:
    """Caps how many fetches run at once against each host name, in this process.

    ``threading`` primitives become gevent-aware under monkeypatching, so this works with
    green threads as well as real ones::

        limiter = HostLimiter(per_host=4)
        with limiter.slot("example.com", should_stop):
            ...  # at most 4 of these blocks run at once for example.com
    """

    def __init__(self, per_host: int) -> None:
        if per_host < 1:
            raise ValueError(f"per_host must be at least 1, not {per_host}")
        self.per_host = per_host
        self._lock = threading.Lock()
        self._hosts: dict[str, _HostSlots] = {}

    def __len__(self) -> int:
        """How many host names have a fetch running or waiting."""
        with self._lock:
            return len(self._hosts)

    @contextlib.contextmanager
    def slot(self, host: str, should_stop: Callable[[], bool] | None = None) -> Iterator[None]:
        """Wait for and hold one of ``host``'s slots (case-insensitive; ports do not matter).

        Raises :class:`JobCancelled` when ``should_stop()`` turns True while waiting.
        """
        key = host.lower()
        with self._lock:
            slots = self._hosts.get(key)
            if slots is None:
                slots = self._hosts[key] = _HostSlots(threading.Condition(self._lock))
            slots.users += 1
        try:
            self._take(slots, should_stop)
        except BaseException:
            with self._lock:
                self._leave(key, slots)
            raise
        try:
            yield
        finally:
            with self._lock:
                slots.running -= 1
                slots.wakeup.notify()
                self._leave(key, slots)

    def _take(self, slots: _HostSlots, should_stop: Callable[[], bool] | None) -> None:
        while True:
            with self._lock:
                if slots.running >= self.per_host:
                    slots.wakeup.wait(SLOT_STOP_CHECK_SECONDS)
                if slots.running < self.per_host:
                    slots.running += 1
                    return
            # Outside the lock: should_stop may do I/O, and other hosts must not wait on it.
            _check_stop(should_stop)

    def _leave(self, key: str, slots: _HostSlots) -> None:
        """Forget ``key`` once nobody uses it, so memory does not grow with distinct hosts."""
        slots.users -= 1
        if slots.users == 0:
            del self._hosts[key]


class _Deadline:
    """An overall time budget for one request, possibly spanning several hops."""

    def __init__(self, request_line: str, seconds: float) -> None:
        self.seconds = seconds
        self._request_line = request_line
        self._ends_at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self._ends_at - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def error(self) -> TransientJobError:
        return TransientJobError(
            "timeout", f"{self._request_line} took longer than {self.seconds:g} seconds in all"
        )


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One certificate-verifying TLS context per process.

    Building it loads the whole CA bundle (tens of milliseconds of CPU), which would
    otherwise dominate a short fetch.
    """
    return httpx.create_ssl_context()


def fetch_url(
    url: str,
    *,
    limits: FetchLimits,
    allow_networks: Sequence[netguard.IPNetwork],
    should_stop: Callable[[], bool] | None = None,
    client: httpx.Client | None = None,
    limiter: HostLimiter | None = None,
    body_sink: BinaryIO | None = None,
) -> FetchOutcome:
    """GET ``url``, following redirects by hand so every hop is SSRF-checked and IP-pinned.

    With ``limiter``, each hop holds a slot of its host while it runs; waiting for the
    first slot does not count against ``limits.total_timeout_seconds``. With ``body_sink``,
    the final response's body (up to ``limits.max_bytes``) is written to it as it is hashed;
    after an error it may hold part of a body.

    Raises :class:`PermanentJobError` or :class:`TransientJobError` with a user-readable
    message, or :class:`JobCancelled` when ``should_stop()`` turns True.
    """
    started = time.perf_counter()
    current = _parse_url(url)
    redirects: list[str] = []
    deadline: _Deadline | None = None
    with _http_client(client, limits.timeout_seconds) as http:
        while True:
            _check_stop(should_stop)
            with _host_slot(limiter, current, should_stop):
                if deadline is None:
                    deadline = _Deadline(f"GET {url}", limits.total_timeout_seconds)
                if deadline.expired():
                    raise deadline.error()
                hop_timeout = min(limits.timeout_seconds, deadline.remaining())
                try:
                    response = _send_pinned(
                        http,
                        "GET",
                        current,
                        headers={"User-Agent": limits.user_agent},
                        timeout=hop_timeout,
                        allow_networks=allow_networks,
                    )
                    try:
                        location = response.headers.get("location")
                        if response.status_code in _REDIRECT_STATUSES and location:
                            if len(redirects) >= limits.max_redirects:
                                raise PermanentJobError(
                                    "too_many_redirects",
                                    f"GET {url} redirected more than {limits.max_redirects} times",
                                )
                            current = _parse_url(_join(current, location))
                            redirects.append(str(current))
                            continue
                        _raise_for_status(response, current)
                        size, sha256, truncated = _read_body(
                            response, limits.max_bytes, should_stop, deadline, body_sink
                        )
                    finally:
                        response.close()
                except httpx.TransportError as exc:
                    if (
                        isinstance(exc, httpx.TimeoutException)
                        and hop_timeout < limits.timeout_seconds
                    ):
                        raise deadline.error() from exc
                    raise _transport_error(exc, "GET", current, hop_timeout) from exc
                return FetchOutcome(
                    url=url,
                    final_url=str(current),
                    status_code=response.status_code,
                    content_type=response.headers.get("content-type"),
                    size_bytes=size,
                    sha256=sha256,
                    elapsed_seconds=time.perf_counter() - started,
                    redirects=redirects,
                    truncated=truncated,
                    headers={
                        name: response.headers[name]
                        for name in KEPT_HEADERS
                        if name in response.headers
                    },
                )


def post_json(
    url: str,
    body: bytes,
    *,
    headers: Mapping[str, str],
    timeout_seconds: float,
    allow_networks: Sequence[netguard.IPNetwork],
) -> PostOutcome:
    """POST ``body`` (JSON) to a webhook receiver with fetch_url's SSRF protections.

    Redirects are not followed: a 3xx is returned like any other status. ``timeout_seconds``
    bounds connecting and each read; reading the response stops after
    ``WEBHOOK_MAX_RESPONSE_BYTES`` or once ``timeout_seconds`` have passed in all, as the
    status is the answer that matters. ``headers`` (e.g. a signature) must not include the
    ones set here: Host, Content-Type, User-Agent, Connection, Accept-Encoding and framing.

    Raises the same errors as :func:`fetch_url` for invalid URLs, blocked addresses, DNS and
    transport failures.
    """
    own = sorted(name for name in headers if name.lower() in _WEBHOOK_OWN_HEADERS)
    if own:
        raise ValueError(f"post_json sets these headers itself: {', '.join(own)}")
    started = time.perf_counter()
    target = _parse_url(url)
    deadline = _Deadline(f"POST {url}", timeout_seconds)
    with _http_client(None, timeout_seconds) as http:
        try:
            response = _send_pinned(
                http,
                "POST",
                target,
                headers={
                    **headers,
                    "Content-Type": "application/json",
                    "User-Agent": WEBHOOK_USER_AGENT,
                },
                content=body,
                timeout=timeout_seconds,
                allow_networks=allow_networks,
            )
        except httpx.TransportError as exc:
            raise _transport_error(exc, "POST", target, timeout_seconds) from exc
        try:
            head = _read_head(response, WEBHOOK_MAX_RESPONSE_BYTES, deadline)
        finally:
            response.close()
    return PostOutcome(
        status_code=response.status_code,
        elapsed_seconds=time.perf_counter() - started,
        response_excerpt=head.decode("utf-8", errors="replace")[:WEBHOOK_EXCERPT_CHARS],
    )


def _check_stop(should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise JobCancelled()


@contextlib.contextmanager
def _http_client(client: httpx.Client | None, timeout_seconds: float) -> Iterator[httpx.Client]:
    """``client`` as is, or a new one closed on exit."""
    if client is not None:
        yield client
        return
    with httpx.Client(
        timeout=timeout_seconds,
        follow_redirects=False,
        trust_env=False,
        verify=tls_context(),
    ) as own:
        yield own


def _host_slot(
    limiter: HostLimiter | None, url: httpx.URL, should_stop: Callable[[], bool] | None
) -> contextlib.AbstractContextManager[None]:
    if limiter is None:
        return contextlib.nullcontext()
    return limiter.slot(url.raw_host.decode("ascii"), should_stop)


def _parse_url(url: str) -> httpx.URL:
    """Accept only absolute http(s) URLs with a host and without credentials."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise PermanentJobError("invalid_url", f"{url} is not a valid URL: {exc}") from None
    if parsed.scheme not in _DEFAULT_PORTS:
        raise PermanentJobError(
            "invalid_url", f"{url} is not an http or https URL; only those can be fetched"
        )
    if not parsed.host:
        raise PermanentJobError("invalid_url", f"{url} has no host name")
    if parsed.userinfo:
        raise PermanentJobError(
            "invalid_url", f"{url} contains a user name or password, which is not allowed"
        )
    _refuse_odd_ipv4(url, parsed.host)
    return parsed


def _refuse_odd_ipv4(url: str, host: str) -> None:
    """Refuse IPv4 addresses not written as four decimals, e.g. 127.1, 2130706433, 0x7f.0.0.1.

    httpx passes them on as host names and the C resolver turns them into addresses. That
    address is still SSRF-checked, but whether and how such a name resolves depends on
    the resolver in use, so they are refused outright.
    """
    if ":" in host:  # an IPv6 literal, already validated by httpx
        return
    last_label = host.removesuffix(".").rsplit(".", 1)[-1]
    if not _NUMERIC_LABEL.fullmatch(last_label):
        return
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise PermanentJobError(
            "invalid_url",
            f"{url}: the host {host} is not a standard IPv4 address; "
            "write IPv4 addresses as four decimal numbers, like 192.0.2.1",
        ) from None


def _join(current: httpx.URL, location: str) -> str:
    try:
        return str(current.join(location))
    except httpx.InvalidURL as exc:
        raise PermanentJobError(
            "invalid_url", f"{current} redirected to an invalid URL {location!r}: {exc}"
        ) from None


def _send_pinned(
    client: httpx.Client,
    method: str,
    url: httpx.URL,
    *,
    headers: Mapping[str, str],
    timeout: float,
    allow_networks: Sequence[netguard.IPNetwork],
    content: bytes | None = None,
) -> httpx.Response:
    """Send to a checked IP of ``url``'s host and return the response, body unread.

    Connecting to the IP we checked, rather than letting httpx resolve the name again,
    stops a DNS answer that changes between check and connect (DNS rebinding). Raises
    :class:`PermanentJobError` or :class:`TransientJobError` for names that do not
    resolve or resolve to a blocked address, :class:`httpx.TransportError` otherwise.
    """
    host = url.raw_host.decode("ascii")
    addresses = _resolve(url, host)
    for address in addresses:
        try:
            netguard.check_address(address, allow_networks)
        except netguard.BlockedAddress as exc:
            raise PermanentJobError(
                "url_blocked",
                f"{url} resolves to {exc.address}, {exc.reason}; "
                "reaching non-public addresses is not allowed",
            ) from None
    pinned_headers = httpx.Headers(headers)
    pinned_headers["Host"] = url.netloc.decode("ascii")
    # An uncompressed body makes byte caps a real memory bound (no decompression bombs)
    # and a hash cover the bytes the server sent.
    pinned_headers["Accept-Encoding"] = "identity"
    # No connection reuse: a pooled TLS connection to the same IP could have been
    # verified for another host name.
    pinned_headers["Connection"] = "close"
    extensions = {"sni_hostname": host} if url.scheme == "https" else {}
    last_error: httpx.ConnectError | None = None
    # Try each address like a normal client would, e.g. "localhost" gives ::1 then 127.0.0.1.
    # Safe for a POST too: a refused connection sent nothing.
    for address in addresses:
        request = client.build_request(
            method,
            url.copy_with(host=str(address)),
            headers=pinned_headers,
            content=content,
            extensions=extensions,
            # Applies the timeout to a caller-supplied client too.
            timeout=timeout,
        )
        try:
            return client.send(request, stream=True, follow_redirects=False)
        except httpx.ConnectError as exc:
            last_error = exc
    assert last_error is not None  # addresses is never empty
    raise last_error


def _resolve(url: httpx.URL, host: str) -> list[netguard.IPAddress]:
    port = url.port or _DEFAULT_PORTS[url.scheme]
    try:
        addresses = netguard.resolve_host(host, port)
    except socket.gaierror as exc:
        if exc.errno in _NO_SUCH_NAME:
            raise PermanentJobError(
                "dns_error", f"{url}: the host name {host} does not exist ({exc.strerror})"
            ) from None
        raise TransientJobError(
            "dns_error", f"{url}: could not look up the host name {host} ({exc.strerror})"
        ) from None
    if not addresses:
        raise PermanentJobError("dns_error", f"{url}: the host name {host} has no address")
    return addresses


def _raise_for_status(response: httpx.Response, url: httpx.URL) -> None:
    status = response.status_code
    if status < 400:
        return
    message = f"GET {url} answered {status} {response.reason_phrase}".rstrip()
    if status >= 500 or status in _TRANSIENT_CLIENT_STATUSES:
        raise TransientJobError("http_error", message)
    raise PermanentJobError("http_error", message)


def _read_body(
    response: httpx.Response,
    max_bytes: int,
    should_stop: Callable[[], bool] | None,
    deadline: _Deadline,
    sink: BinaryIO | None,
) -> tuple[int, str, bool]:
    """Stream the body through sha256 (and ``sink``), stopping at ``max_bytes``.

    Returns (size, hex digest, truncated); raises httpx's errors as they come.
    """
    digest = hashlib.sha256()
    size = 0
    truncated = False
    for chunk in response.iter_raw():
        _check_stop(should_stop)
        # Checked per chunk, so a server dripping bytes cannot hold the fetch past it.
        if deadline.expired():
            raise deadline.error()
        room = max_bytes - size
        if len(chunk) > room:
            chunk = chunk[:room]
            truncated = True
        digest.update(chunk)
        if sink is not None:
            sink.write(chunk)
        size += len(chunk)
        if truncated:
            break
    return size, digest.hexdigest(), truncated


def _read_head(response: httpx.Response, max_bytes: int, deadline: _Deadline) -> bytes:
    """Up to ``max_bytes`` of the body, less if it fails or the deadline passes first."""
    head = bytearray()
    with contextlib.suppress(httpx.TransportError):
        for chunk in response.iter_raw():
            head += chunk[: max_bytes - len(head)]
            if len(head) >= max_bytes or deadline.expired():
                break
    return bytes(head)


def _transport_error(
    exc: httpx.TransportError, method: str, url: httpx.URL, timeout_seconds: float
) -> JobError:
    """Translate an httpx failure into a job error with a message a user can act on."""
    if isinstance(exc, httpx.TimeoutException):
        return TransientJobError(
            "timeout", f"{method} {url} timed out after {timeout_seconds:g} seconds"
        )
    cert_error = _find_cause(exc, ssl.SSLCertVerificationError)
    if cert_error is not None:
        return PermanentJobError(
            "tls_error",
            f"{method} {url} failed: the server's TLS certificate is not valid "
            f"({cert_error.verify_message})",
        )
    if isinstance(exc, httpx.ConnectError):
        return TransientJobError("connect_error", f"{method} {url} could not connect: {exc}")
    return TransientJobError("network_error", f"{method} {url} failed: {exc}")


def _find_cause(exc: BaseException, kind: type[_E]) -> _E | None:
    """The first exception of ``kind`` in ``exc``'s cause/context chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
