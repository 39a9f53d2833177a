"""Fetch one URL safely: SSRF-checked, size-capped, redirect-limited, hashed."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from sous_core import netguard
from sous_core.errors import JobCancelled, JobError, PermanentJobError, TransientJobError

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_CLIENT_STATUSES = frozenset({408, 425, 429})
_DEFAULT_PORTS = {"http": 80, "https": 443}
# getaddrinfo codes meaning "this name has no address"; anything else may heal on retry.
_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}

_E = TypeVar("_E", bound=BaseException)


@dataclass(frozen=True)
class FetchLimits:
    """Bounds for one fetch."""

    #: Connect and read timeout for each hop, in seconds.
    timeout_seconds: float = 10.0
    max_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 5
    user_agent: str = "Sous-Fetch/0.1"


@dataclass(frozen=True)
class FetchOutcome:
    """What a successful fetch read; the body itself is not kept, only its size and hash."""

    url: str
    final_url: str
    status_code: int
    content_type: str | None
    size_bytes: int
    sha256: str
    elapsed_seconds: float
    redirects: list[str]
    truncated: bool

    def as_result(self) -> dict[str, Any]:
        """All fields as a JSON-serialisable dict (the job's stored result)."""
        return dataclasses.asdict(self)


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
) -> FetchOutcome:
    """GET ``url``, following redirects by hand so every hop is SSRF-checked and IP-pinned.

    Raises :class:`PermanentJobError` or :class:`TransientJobError` with a user-readable
    message, or :class:`JobCancelled` when ``should_stop()`` turns True.
    """
    started = time.perf_counter()
    current = _parse_url(url)
    redirects: list[str] = []
    own_client = client is None
    if client is None:
        client = httpx.Client(
            timeout=limits.timeout_seconds,
            follow_redirects=False,
            trust_env=False,
            verify=tls_context(),
        )
    try:
        while True:
            if should_stop is not None and should_stop():
                raise JobCancelled()
            response = _open(client, current, limits, allow_networks)
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
                size, sha256, truncated = _read_body(response, current, limits, should_stop)
            finally:
                response.close()
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
            )
    finally:
        if own_client:
            client.close()


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
    return parsed


def _join(current: httpx.URL, location: str) -> str:
    try:
        return str(current.join(location))
    except httpx.InvalidURL as exc:
        raise PermanentJobError(
            "invalid_url", f"{current} redirected to an invalid URL {location!r}: {exc}"
        ) from None


def _open(
    client: httpx.Client,
    url: httpx.URL,
    limits: FetchLimits,
    allow_networks: Sequence[netguard.IPNetwork],
) -> httpx.Response:
    """Send GET to a checked IP of ``url``'s host and return the response, body unread.

    Connecting to the IP we checked, rather than letting httpx resolve the name again,
    stops a DNS answer that changes between check and connect (DNS rebinding).
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
                "fetching non-public addresses is not allowed",
            ) from None
    headers = {
        "Host": url.netloc.decode("ascii"),
        "User-Agent": limits.user_agent,
        # An uncompressed body makes max_bytes a real memory bound (no decompression bombs)
        # and the hash cover the bytes the server sent.
        "Accept-Encoding": "identity",
        # No connection reuse: a pooled TLS connection to the same IP could have been
        # verified for another host name.
        "Connection": "close",
    }
    extensions = {"sni_hostname": host} if url.scheme == "https" else {}
    last_error: httpx.ConnectError | None = None
    # Try each address like a normal client would, e.g. "localhost" gives ::1 then 127.0.0.1.
    for address in addresses:
        request = client.build_request(
            "GET",
            url.copy_with(host=str(address)),
            headers=headers,
            extensions=extensions,
            # Applies the limits to a caller-supplied client too.
            timeout=limits.timeout_seconds,
        )
        try:
            return client.send(request, stream=True, follow_redirects=False)
        except httpx.ConnectError as exc:
            last_error = exc
        except httpx.TransportError as exc:
            raise _transport_error(exc, url, limits) from exc
    assert last_error is not None  # addresses is never empty
    raise _transport_error(last_error, url, limits) from last_error


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
    url: httpx.URL,
    limits: FetchLimits,
    should_stop: Callable[[], bool] | None,
) -> tuple[int, str, bool]:
    """Stream the body through sha256, stopping at ``max_bytes``: (size, hex digest, truncated)."""
    digest = hashlib.sha256()
    size = 0
    truncated = False
    try:
        for chunk in response.iter_raw():
            if should_stop is not None and should_stop():
                raise JobCancelled()
            room = limits.max_bytes - size
            if len(chunk) > room:
                chunk = chunk[:room]
                truncated = True
            digest.update(chunk)
            size += len(chunk)
            if truncated:
                break
    except httpx.TransportError as exc:
        raise _transport_error(exc, url, limits) from exc
    return size, digest.hexdigest(), truncated


def _transport_error(exc: httpx.TransportError, url: httpx.URL, limits: FetchLimits) -> JobError:
    """Translate an httpx failure into a job error with a message a user can act on."""
    if isinstance(exc, httpx.TimeoutException):
        return TransientJobError(
            "timeout", f"GET {url} timed out after {limits.timeout_seconds:g} seconds"
        )
    cert_error = _find_cause(exc, ssl.SSLCertVerificationError)
    if cert_error is not None:
        return PermanentJobError(
            "tls_error",
            f"GET {url} failed: the server's TLS certificate is not valid "
            f"({cert_error.verify_message})",
        )
    if isinstance(exc, httpx.ConnectError):
        return TransientJobError("connect_error", f"GET {url} could not connect: {exc}")
    return TransientJobError("network_error", f"GET {url} failed: {exc}")


def _find_cause(exc: BaseException, kind: type[_E]) -> _E | None:
    """The first exception of ``kind`` in ``exc``'s cause/context chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
