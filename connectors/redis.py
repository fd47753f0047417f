"""Redis (live dashboard, query cache) through redis-py."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import NoBackoff

from connectors import ServiceInfo, ServiceUnavailable


class Settings(Protocol):
    """The settings this connector reads: the application passes its settings object in (never imported here)."""

    redis_url: str
    connect_timeout_s: float


SERVICE = "redis"
log = logging.getLogger("cqrs.redis")
# After a Redis restart every pooled connection is dead. One immediate retry on a fresh connection hides
# that from callers (redis-py's default, a jittered back-off of up to a second per attempt, outlasted the
# query API's cache budget, so every pooled connection failed a read once: measured 20 of 20).
RETRIES = 1


def _options(settings: Settings) -> dict:
    return {"socket_connect_timeout": settings.connect_timeout_s,
            "socket_timeout": max(settings.connect_timeout_s, 10.0), "decode_responses": True}


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, retry=redis.retry.Retry(NoBackoff(), RETRIES),
                                **_options(settings))


def async_redis_client(settings: Settings) -> redis.asyncio.Redis:
    return redis.asyncio.Redis.from_url(settings.redis_url, retry=redis.asyncio.retry.Retry(NoBackoff(), RETRIES),
                                        **_options(settings))


def check(settings: Settings) -> ServiceInfo:
    client = redis_client(settings)
    try:
        client.ping()
        version = client.info("server")["redis_version"]
    except redis.RedisError as exc:
        raise ServiceUnavailable(SERVICE, settings.redis_url, str(exc)) from None
    finally:
        client.close()
    return ServiceInfo(SERVICE, settings.redis_url, version)


class BestEffort:
    """Writes that must never hold their caller back (progress reports, published heads): each is bounded
    by `timeout_s`, and after a failure the next ones are skipped for `pause_s` (the next write that runs
    replaces what was skipped)."""

    def __init__(self, what: str, timeout_s: float = 0.5, pause_s: float = 5.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.what, self.timeout_s, self.pause_s, self.monotonic = what, timeout_s, pause_s, monotonic
        self._paused_until = 0.0

    async def run(self, write: Callable[[], Awaitable[object]]) -> bool:
        if self.monotonic() < self._paused_until:
            return False
        try:
            async with asyncio.timeout(self.timeout_s):
                await write()
        except Exception as exc:  # noqa: BLE001 - best effort by design
            self._paused_until = self.monotonic() + self.pause_s
            log.info("%s skipped for %.0fs: %s: %s", self.what, self.pause_s, type(exc).__name__, exc)
            return False
        return True
