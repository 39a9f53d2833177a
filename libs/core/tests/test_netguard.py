"""Tests for the SSRF guard: network parsing, address classification, allow lists, resolving."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_address

import pytest

from sous_core.netguard import (
    BlockedAddress,
    blocked_reason,
    check_address,
    is_public_address,
    parse_networks,
    resolve_host,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("   ", ()),
        ("10.0.0.0/8", (IPv4Network("10.0.0.0/8"),)),
        (
            " 10.0.0.0/8 ,127.0.0.2, fd00::/8 ",
            (IPv4Network("10.0.0.0/8"), IPv4Network("127.0.0.2/32"), IPv6Network("fd00::/8")),
        ),
        ("::1", (IPv6Network("::1/128"),)),
        ("10.0.0.0/8,", (IPv4Network("10.0.0.0/8"),)),
    ],
)
def test_parse_networks(text: str, expected: tuple[object, ...]) -> None:
    assert parse_networks(text) == expected


@pytest.mark.parametrize(
    ("text", "bad_entry"),
    [
        ("10.0.0.0/8, not-a-network", "not-a-network"),
        ("10.0.0.1/8", "10.0.0.1/8"),  # host bits set: probably a typo for 10.0.0.0/8
        ("10.0.0.0/33", "10.0.0.0/33"),
        ("300.1.1.1", "300.1.1.1"),
    ],
)
def test_parse_networks_rejects_bad_entries_by_name(text: str, bad_entry: str) -> None:
    with pytest.raises(ValueError, match="invalid network") as info:
        parse_networks(text)
    assert repr(bad_entry) in str(info.value)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::808:808", True),
        ("127.0.0.1", False),
        ("::1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),  # noqa: S104 - an address to classify, not a bind
        ("0.1.2.3", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("224.0.0.1", False),
        ("255.255.255.255", False),
        ("240.0.0.1", False),
        ("198.18.0.1", False),
        ("192.0.2.1", False),
        ("203.0.113.7", False),
        ("2001:db8::1", False),
        ("ff02::1", False),
        ("64:ff9b::a00:1", False),
        ("2002:a00:1::", False),
        ("2002:c0a8:101::1", False),
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(address) is public
    assert is_public_address(ip_address(address)) is public


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.5", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("::ffff:127.0.0.1", "IPv4-mapped address embedding 127.0.0.1, a loopback"),
        ("64:ff9b::a00:1", "NAT64 address embedding 10.0.0.1, a private"),
    ],
)
def test_blocked_reason_says_why(address: str, words: str) -> None:
    reason = blocked_reason(address)
    assert reason is not None
    assert words in reason


def test_check_address_allows_public_addresses() -> None:
    check_address("8.8.8.8", ())


def test_check_address_blocks_with_address_and_reason() -> None:
    with pytest.raises(BlockedAddress, match=r"^127\.0\.0\.1 is a loopback address$") as info:
        check_address("127.0.0.1", ())
    assert info.value.address == ip_address("127.0.0.1")
    assert isinstance(info.value, ValueError)


def test_check_address_allow_list_wins_but_only_for_its_networks() -> None:
    allow = parse_networks("127.0.0.2/32")
    check_address("127.0.0.2", allow)
    check_address("::ffff:127.0.0.2", allow)
    with pytest.raises(BlockedAddress):
        check_address("127.0.0.1", allow)
    with pytest.raises(BlockedAddress):
        check_address("::1", allow)


def test_check_address_allows_ipv6_networks() -> None:
    check_address("fd12::5", parse_networks("fd00::/8"))


def test_resolve_host_localhost() -> None:
    addresses = resolve_host("localhost", 80)
    assert {ip_address("127.0.0.1"), ip_address("::1")} & set(addresses)
    assert len(addresses) == len(set(addresses))


@pytest.mark.parametrize("literal", ["10.0.0.5", "::1", "2606:4700:4700::1111"])
def test_resolve_host_passes_literal_ips_through(literal: str) -> None:
    assert resolve_host(literal, 443) == [ip_address(literal)]
