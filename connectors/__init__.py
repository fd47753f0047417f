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
