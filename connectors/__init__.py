"""One module per external system: a ready client and a fail-fast `check` for each."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


class ServiceUnavailable(RuntimeError):
    """Raised when a service cannot be reached; its message is one line naming service, address and reason."""

    def __init__(self, service: str, address: str, reason: str) -> None:
        self.service = service
        self.address = address
        self.reason = " ".join(str(reason).split())[:300]
        super().__init__(f"{service} unreachable at {address}: {self.reason}")


def redact_url(url: str) -> str:
    """`url` with the password of its user info replaced by `***`, for logs, errors and reprs (a Redis or
    MongoDB URL may carry one). Anything not shaped like scheme://user:password@host is returned as is."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{hosts}{slash}{path}"


def secret(value: object) -> str | None:
    """The plain value of a SecretStr setting (or of a plain string), only where a client is built."""
    if value is None:
        return None
    reveal = getattr(value, "get_secret_value", None)
    return reveal() if reveal else str(value)


@dataclass(frozen=True)
class ServiceInfo:
    service: str
    address: str
    version: str


async def keep_running(what: str, run: Callable[[], Awaitable[None]], errors: tuple[type[BaseException], ...],
                       log: logging.Logger, *, stopping: Callable[[], bool] = lambda: False,
                       sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, first_s: float = 0.5,
                       max_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
    """The one reconnect policy of the long-lived connections (the outbox relay's leadership, the query
    API's published heads and announcements): run `run` again whenever it ends or fails with one of
    `errors`, waiting between runs from `first_s`, doubling up to `max_s`, and from `first_s` again once a
    run lasted longer than `max_s` (it had been connected). Until `stopping()`, or cancelled."""
    backoff = first_s
    while not stopping():
        started = clock()
        try:
            await run()
        except errors as exc:
            if clock() - started > max_s:
                backoff = first_s
            log.warning("%s: %s; again in %.1fs", what, (str(exc) or type(exc).__name__).splitlines()[0], backoff)
        else:
            backoff = first_s
        if stopping():
            return
        await sleep(backoff)
        backoff = min(backoff * 2, max_s)
