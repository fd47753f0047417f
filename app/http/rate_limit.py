"""Per-caller rate limits: a token bucket per subject (or client address without a token) and API.

The buckets live in Redis, so every replica of a service shares them: one Lua script refills and takes a
token atomically, timed by Redis' own clock (replicas' clocks never disagree about a bucket). While
Redis cannot answer within REDIS_BUDGET_S the limit is kept in process instead (bounded to
LOCAL_BUCKETS callers): a Redis outage neither lets callers through unlimited nor blocks the API.
A refused request is 429 with `Retry-After`, the whole seconds until a token is back.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import redis.asyncio
from fastapi import Depends, HTTPException, Request
from redis.exceptions import RedisError

from app.http.errors import error_body
from app.http.identity import MaybeCaller
from domain.access import Principal

log = logging.getLogger("cqrs.rate_limit")
REDIS_BUDGET_S = 0.05
REDIS_BACKOFF_S = 1.0
LOCAL_BUCKETS = 10_000

TAKE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(held[1]) or burst
local at = tonumber(held[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


@dataclass
class TokenBucket:
    """The same arithmetic as TAKE, for the in-process fallback: `take` returns 0 when admitted, else
    the seconds until a token is back."""

    rate: float
    burst: float
    tokens: float
    at: float

    def take(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    def __init__(self, client: redis.asyncio.Redis, service: str, rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.script = client.register_script(TAKE)
        self.service, self.rate, self.burst, self.clock = service, rate, burst, clock
        self.local: OrderedDict[str, TokenBucket] = OrderedDict()
        self.redis_back_at = 0.0

    async def wait_s(self, caller: str) -> float:
        """0 when the caller may go on; otherwise how long until it may."""
        now = self.clock()
        if now >= self.redis_back_at:
            try:
                return float(await asyncio.wait_for(
                    self.script(keys=[f"ratelimit:{self.service}:{caller}"], args=[self.rate, self.burst]),
                    REDIS_BUDGET_S))
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                log.warning("rate limits kept in process for %.0f s: redis %s", REDIS_BACKOFF_S,
                            type(exc).__name__)
                self.redis_back_at = now + REDIS_BACKOFF_S
        return self._local(caller, now)

    def _local(self, caller: str, now: float) -> float:
        bucket = self.local.pop(caller, None) or TokenBucket(self.rate, self.burst, self.burst, now)
        self.local[caller] = bucket
        if len(self.local) > LOCAL_BUCKETS:
            self.local.popitem(last=False)
        return bucket.take(now)


def caller_key(request: Request, principal: Principal | None) -> str:
    if principal is not None:
        return f"sub:{principal.subject}"
    return f"addr:{request.client.host if request.client else 'unknown'}"


async def rate_limited(request: Request, principal: MaybeCaller) -> None:
    wait = await request.app.state.rate_limiter.wait_s(caller_key(request, principal))
    if wait > 0:
        raise HTTPException(429, detail=error_body("rate_limited", "too many requests from this caller; retry "
                                                   "after the time Retry-After gives"),
                            headers={"Retry-After": str(max(1, math.ceil(wait)))})


RateLimited = Annotated[None, Depends(rate_limited)]
