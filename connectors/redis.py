"""Redis (live dashboard, query cache) through redis-py."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import NoBackoff

from connectors import ServiceInfo, ServiceUnavailable, redact_url, secret


class Settings(Protocol):
    """The settings this connector reads: the application passes its settings object in (never imported here)."""

    redis_url: str
    connect_timeout_s: float
    redis_username: str | None
    redis_password: Any  # SecretStr | None
    redis_tls: bool
    redis_ca_file: str | None


SERVICE = "redis"
log = logging.getLogger("cqrs.redis")
# After a Redis restart every pooled connection is dead. One immediate retry on a fresh connection hides
# that from callers (redis-py's default, a jittered back-off of up to a second per attempt, outlasted the
# query API's cache budget, so every pooled connection failed a read once: measured 20 of 20).
RETRIES = 1


def _options(settings: Settings) -> dict:
    return {"socket_connect_timeout": settings.connect_timeout_s,
            "socket_timeout": max(settings.connect_timeout_s, 10.0), "decode_responses": True}


def security_options(settings: Settings) -> dict[str, Any]:
    """ACL user, password and TLS as redis-py keyword options (TLS: `ssl_*`, which SSLConnection takes)."""
    options: dict[str, Any] = {}
    if settings.redis_username:
        options["username"] = settings.redis_username
    if settings.redis_password:
        options["password"] = secret(settings.redis_password)
    if _tls(settings) and settings.redis_ca_file:
        options["ssl_ca_certs"] = settings.redis_ca_file
    return options


def _tls(settings: Settings) -> bool:
    return settings.redis_tls or settings.redis_url.startswith("rediss://")


def _url(settings: Settings) -> str:
    """REDIS_URL as redis-py should read it: `rediss://` when REDIS_TLS is set, and without user info when
    the settings carry credentials (redis-py lets the URL's win over keyword options; ours must win)."""
    url = settings.redis_url
    if settings.redis_tls and url.startswith("redis://"):
        url = "rediss://" + url[len("redis://"):]
    if settings.redis_username or settings.redis_password:
        scheme, _, rest = url.partition("://")
        authority, slash, path = rest.partition("/")
        url = f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"
    return url


def address(settings: Settings) -> str:
    """REDIS_URL for logs and errors, without a password it may carry."""
    return redact_url(settings.redis_url)


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(_url(settings), retry=redis.retry.Retry(NoBackoff(), RETRIES),
                                **_options(settings), **security_options(settings))


def async_redis_client(settings: Settings) -> redis.asyncio.Redis:
    return redis.asyncio.Redis.from_url(_url(settings), retry=redis.asyncio.retry.Retry(NoBackoff(), RETRIES),
                                        **_options(settings), **security_options(settings))


def check(settings: Settings) -> ServiceInfo:
    client = redis_client(settings)
    try:
        client.ping()
        version = client.info("server")["redis_version"]
    except redis.RedisError as exc:
        raise ServiceUnavailable(SERVICE, address(settings), str(exc)) from None
    finally:
        client.close()
    return ServiceInfo(SERVICE, address(settings), version)


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
