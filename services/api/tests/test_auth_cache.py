"""The API-key check cache: hits within the time to live, never past a key's expiry."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sous_api.auth_cache import PrincipalCache
from sous_core.apikeys import Principal
from sous_core.db.models import utcnow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def principal(expires_in: timedelta | None = None) -> Principal:
    return Principal(
        tenant_id=uuid.uuid4(),
        tenant_name="acme",
        key_id=uuid.uuid4(),
        key_expires_at=None if expires_in is None else utcnow() + expires_in,
    )


def test_a_checked_key_is_remembered_for_the_time_to_live_only() -> None:
    clock = Clock()
    cache = PrincipalCache(5.0, clock=clock)
    who = principal()
    assert cache.get("sous_a_b") is None
    cache.put("sous_a_b", who)
    clock.now += 4.9
    assert cache.get("sous_a_b") is who
    assert cache.get("sous_a_c") is None  # another token is another key
    clock.now += 0.2
    assert cache.get("sous_a_b") is None
    assert len(cache) == 0


def test_a_key_is_never_remembered_past_its_expiry() -> None:
    clock = Clock()
    cache = PrincipalCache(300.0, clock=clock)
    cache.put("soon", principal(expires_in=timedelta(seconds=2)))
    cache.put("gone", principal(expires_in=timedelta(seconds=-1)))
    assert cache.get("gone") is None
    assert cache.get("soon") is not None
    clock.now += 2.5
    assert cache.get("soon") is None


def test_the_least_recently_used_key_goes_first_when_full() -> None:
    cache = PrincipalCache(60.0, max_entries=2)
    cache.put("one", principal())
    cache.put("two", principal())
    assert cache.get("one") is not None  # "two" is now the least recently used
    cache.put("three", principal())
    assert cache.get("two") is None
    assert cache.get("one") is not None
    assert cache.get("three") is not None


def test_a_time_to_live_of_zero_turns_the_cache_off() -> None:
    cache = PrincipalCache(0.0)
    cache.put("token", principal())
    assert cache.get("token") is None
    assert len(cache) == 0


def test_tokens_are_not_kept_in_memory() -> None:
    cache = PrincipalCache(60.0)
    cache.put("sous_prefix_very-secret", principal())
    assert all(b"very-secret" not in key for key in cache._entries)
