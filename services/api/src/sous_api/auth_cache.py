"""Successful API-key checks remembered for a few seconds, so a busy client costs no query.

Keyed by the SHA-256 of the bearer token (the token itself is never kept). Only keys
that checked out are remembered, each until the earlier of the cache's time to live
and the key's own expiry; unknown, revoked and expired keys always go to the database.
The price is that a revoked key keeps working in a process for up to the time to live
(``SOUS_AUTH_CACHE_SECONDS``, 0 turns the cache off). Used from the event loop only.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime

from sous_core.apikeys import Principal
from sous_core.db.models import utcnow

#: Keys remembered at most; the least recently used goes first.
MAX_ENTRIES = 10_000


class PrincipalCache:
    def __init__(
        self,
        ttl_seconds: float,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.ttl_seconds > 0

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, token: str) -> Principal | None:
        if not self.enabled:
            return None
        key = self._key(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        until, principal = entry
        if self._clock() >= until:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return principal

    def put(self, token: str, principal: Principal) -> None:
        if not self.enabled:
            return
        ttl = self.ttl_seconds
        if principal.key_expires_at is not None:
            ttl = min(ttl, _seconds_until(principal.key_expires_at))
        if ttl <= 0:
            return
        key = self._key(token)
        self._entries[key] = (self._clock() + ttl, principal)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def _seconds_until(moment: datetime) -> float:
    return (moment - utcnow()).total_seconds()
