"""Readers waiting for their own writes, woken by the projection's announcement, never by polling.

After each batch a worker announces every partition it applied on the Redis channel
`progress:<consumer group>` (agents/progress_report.py). One subscription per query API process
listens; a reader *arms* the partition it waits for before it reads the view, so an announcement
between its read and its wait still wakes it. Waits are bounded by the reader's `wait_ms` (at most
MAX_WAIT_MS) and by the request's budget; while Redis cannot be subscribed to, waits simply time out
and the answer comes from the write model.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from connectors import keep_running

log = logging.getLogger("app.queries.own_writes")
MAX_WAIT_MS = 2000
MAX_BACKOFF_S = 5.0


class Announcements:
    def __init__(self, redis: Any, channels: list[str]) -> None:
        self.redis = redis
        self.channels = channels
        self._armed: dict[tuple[str, str], asyncio.Event] = {}  # one per partition waited for: bounded

    def arm(self, channel: str, field: str) -> asyncio.Event:
        """The event the next announcement of `field` on `channel` sets."""
        return self._armed.setdefault((channel, field), asyncio.Event())

    def announce(self, channel: str, field: str) -> None:
        event = self._armed.pop((channel, field), None)
        if event is not None:
            event.set()

    async def run(self) -> None:
        """Listen until cancelled, subscribing again (bounded back-off) after any loss."""
        await keep_running("announcements", self._listen, (Exception,), log, max_s=MAX_BACKOFF_S)

    async def _listen(self) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*self.channels)
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    self.announce(message["channel"], message["data"])
        finally:
            await pubsub.aclose()


async def until_reflected(read: Callable[[], Awaitable[Any]], reflected: Callable[[Any], bool],
                          arm: Callable[[], list[asyncio.Event]], wait_s: float) -> tuple[Any, bool]:
    """Read until `reflected(answer)`, waiting for an announcement between reads; gives up after `wait_s`.
    Returns the last answer and whether it reflects what was asked."""
    end = time.monotonic() + wait_s
    while True:
        events = arm()
        answer = await read()
        if answer is not None and reflected(answer):
            return answer, True
        remaining = end - time.monotonic()
        if remaining <= 0:
            return answer, False
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
