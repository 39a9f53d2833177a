"""Per-tenant rate limits: a token bucket in Redis, shared by every API replica.

Each tenant's bucket holds up to ``burst`` tokens and refills at ``per_second``; a
request takes one or is refused with ``429`` and a ``Retry-After``. One Lua script reads
and updates the bucket, on Redis's clock, so replicas never race or disagree on time.

Redis is not needed to accept work: when it does not answer the limiter lets requests
through (fails open), logs it, and leaves Redis alone for a few seconds.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass

import redis.asyncio as redis
from redis.exceptions import RedisError

from sous_core.settings import Settings

logger = logging.getLogger("sous.api.rate_limit")

#: KEYS[1]: the bucket; ARGV: rate (tokens/s), burst. Returns {allowed, retry_after}.
BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(bucket[1]) or burst
local at = tonumber(bucket[2]) or now
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate)
  at = now
end
local allowed = 0
local retry_after = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry_after = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(at))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(retry_after)}
"""

#: Seconds Redis is left alone after it failed to answer (requests pass meanwhile).
BACKOFF_SECONDS = 5.0
#: Seconds to connect to Redis and to run the script; a slow Redis must not slow the API.
REDIS_TIMEOUT = 0.25


@dataclass(frozen=True)
class Decision:
    allowed: bool
    #: Whole seconds until a token is back (when refused).
    retry_after: int = 0


class RateLimiter:
    """``await limiter.check(tenant_id)`` before serving a tenant's request."""

    def __init__(self, redis_url: str, per_second: float, burst: int) -> None:
        self.per_second = per_second
        self.burst = burst or math.ceil(per_second)
        self._redis = redis.Redis.from_url(
            redis_url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
        )
        self._script = self._redis.register_script(BUCKET_SCRIPT)
        self._skip_until = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter | None:
        """The configured limiter, or ``None`` when rate limiting is off."""
        if settings.rate_limit_per_second <= 0:
            return None
        return cls(
            settings.rate_limit_redis_url or settings.result_backend,
            settings.rate_limit_per_second,
            settings.rate_limit_burst,
        )

    async def check(self, tenant_id: uuid.UUID) -> Decision:
        """Take a token from the tenant's bucket; allowed when Redis cannot tell."""
        if time.monotonic() < self._skip_until:
            return Decision(allowed=True)
        try:
            allowed, retry_after = await self._script(
                keys=[f"sous:rate:{tenant_id}"], args=[self.per_second, self.burst]
            )
        except (RedisError, OSError) as exc:
            self._skip_until = time.monotonic() + BACKOFF_SECONDS
            logger.warning(
                "rate limiter: Redis did not answer (%r); requests pass unlimited for %gs",
                exc,
                BACKOFF_SECONDS,
            )
            return Decision(allowed=True)
        if int(allowed):
            return Decision(allowed=True)
        return Decision(allowed=False, retry_after=max(1, math.ceil(float(retry_after))))

    async def close(self) -> None:
        await self._redis.aclose()
