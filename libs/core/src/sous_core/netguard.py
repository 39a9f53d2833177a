"""Which network addresses a fetch may reach (SSRF guard)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# Checked in order, so a specific entry (cloud metadata, broadcast) wins over the range holding it.
_BLOCKED_V4: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(net), reason)
    for net, reason in (
        ("0.0.0.0/8", "an unspecified ('this network') address"),
        ("10.0.0.0/8", "a private address"),
        ("100.64.0.0/10", "a carrier-grade NAT (shared) address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.169.254/32", "a link-local address (the cloud metadata service)"),
        ("169.254.0.0/16", "a link-local address"),
        ("172.16.0.0/12", "a private address"),
        ("192.0.0.0/24", "a reserved (IETF protocol) address"),
        ("192.0.2.0/24", "a documentation address"),
        ("192.88.99.0/24", "a reserved (6to4 relay) address"),
        ("192.168.0.0/16", "a private address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "a broadcast address"),
        ("240.0.0.0/4", "a reserved address"),
    )
)

_BLOCKED_V6: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(net), reason)
    for net, reason in (
        ("::/128", "an unspecified address"),
        ("::1/128", "a loopback address"),
        ("64:ff9b:1::/48", "a private (local-use NAT64) address"),
        ("2001::/23", "a reserved (IETF protocol) address"),
        ("2001:db8::/32", "a documentation address"),
        ("3fff::/20", "a documentation address"),
        ("fc00::/7", "a private (unique local) address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a private (site-local) address"),
        ("ff00::/8", "a multicast address"),
    )
)

_NAT64 = IPv6Network("64:ff9b::/96")
_GLOBAL_UNICAST_V6 = IPv6Network("2000::/3")


class BlockedAddress(ValueError):
    """A fetch would reach a non-public address that the allow list does not cover."""

    def __init__(self, address: IPAddress, reason: str) -> None:
        super().__init__(f"{address} is {reason}")
        self.address = address
        #: Noun phrase such as "a loopback address", for messages shown to users.
        self.reason = reason


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """Parse ``"10.0.0.0/8, 127.0.0.2"`` into networks; a bare address is a /32 or /128."""
    networks = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry))
        except ValueError as exc:
            raise ValueError(f"invalid network {entry!r}: {exc}") from None
    return tuple(networks)


def blocked_reason(ip: IPAddress | str) -> str | None:
    """Why ``ip`` is not public (e.g. "a loopback address"), or None when it is public."""
    ip = ipaddress.ip_address(ip)
    if isinstance(ip, IPv6Address):
        embedded, kind = _embedded_v4(ip)
        if embedded is not None:
            inner = blocked_reason(embedded)
            return None if inner is None else f"{kind} address embedding {embedded}, {inner}"
        table: Iterable[tuple[IPNetwork, str]] = _BLOCKED_V6
    else:
        table = _BLOCKED_V4
    for network, reason in table:
        if ip in network:
            return reason
    if isinstance(ip, IPv6Address) and ip not in _GLOBAL_UNICAST_V6:
        return "a reserved address"
    # Backstop for ranges the tables above miss; the stdlib flags are version-dependent.
    if not ip.is_global or ip.is_multicast or ip.is_reserved:
        return "a reserved address"
    return None


def is_public_address(ip: IPAddress | str) -> bool:
    """True only for globally routable unicast addresses; strict when in doubt."""
    return blocked_reason(ip) is None


def check_address(ip: IPAddress | str, allow_networks: Iterable[IPNetwork]) -> None:
    """Raise :class:`BlockedAddress` unless ``ip`` is public or inside ``allow_networks``."""
    ip = ipaddress.ip_address(ip)
    # Judge ::ffff:a.b.c.d against IPv4 allow entries too, as the kernel connects to a.b.c.d.
    candidates = [ip]
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    if any(candidate in network for candidate in candidates for network in allow_networks):
        return
    reason = blocked_reason(ip)
    if reason is not None:
        raise BlockedAddress(ip, reason)


def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Resolve ``host`` to its TCP addresses (IPv4 and IPv6), deduplicated, resolver order kept.

    A literal IP is returned as is. ``socket.gaierror`` propagates to the caller.
    """
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    addresses: dict[IPAddress, None] = {}
    for *_, sockaddr in infos:
        addresses[ipaddress.ip_address(sockaddr[0])] = None
    return list(addresses)


def _embedded_v4(ip: IPv6Address) -> tuple[IPv4Address | None, str]:
    """The IPv4 address an IPv4-mapped, NAT64 or 6to4 address reaches, with that kind's name."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "an IPv4-mapped"
    if ip in _NAT64:
        return IPv4Address(int(ip) & 0xFFFFFFFF), "a NAT64"
    if ip.sixtofour is not None:
        return ip.sixtofour, "a 6to4"
    return None, ""
