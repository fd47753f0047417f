"""The published heads of every partition, followed in process: freshness costs no query per request.

The relay raises `stream_heads` in the statement that marks rows published, and a trigger notifies
`stream_heads`; this follower LISTENs, re-reads the table (one row per partition) on each notification
and at least every RELOAD_S, and reconnects with a bounded back-off. While it cannot reach PostgreSQL it
keeps the heads it last read: the relay needs the same database to publish anything, so they stay
true unless the two lose PostgreSQL separately, which `/readyz` shows.
"""
from __future__ import annotations

import logging
from collections.abc import Collection

import psycopg

from connectors import keep_running

log = logging.getLogger("app.queries.heads")
RELOAD_S = 5.0
MAX_BACKOFF_S = 5.0


class HeadsFollower:
    """Follows the heads of `topics` only: the table also holds the heads of every other topic prefix the
    relay ever published under, and each notification re-reads what this query API serves, no more."""

    def __init__(self, conninfo: str, connect_timeout_s: float, topics: Collection[str]) -> None:
        self.conninfo = conninfo  # connectors.postgres.conninfo: may hold the password, never log it
        self.connect_timeout = max(1, int(connect_timeout_s))
        self.topics = sorted(topics)
        self.heads: dict[tuple[str, int], int] = {}

    def head(self, topic: str, partition: int) -> int | None:
        return self.heads.get((topic, partition))

    def of_topic(self, topic: str) -> dict[int, int]:
        return {p: head for (t, p), head in self.heads.items() if t == topic}

    async def run(self) -> None:
        """Follow until cancelled."""
        await keep_running("published heads", self._follow, (psycopg.Error, OSError), log, max_s=MAX_BACKOFF_S)

    async def _follow(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True,
                                                         connect_timeout=self.connect_timeout) as conn:
            await conn.execute("listen stream_heads")
            while True:
                await self._load(conn)
                async for _ in conn.notifies(timeout=RELOAD_S):
                    break

    async def _load(self, conn: psycopg.AsyncConnection) -> None:
        cur = await conn.execute("select topic, partition, next_offset from stream_heads where topic = any(%s)",
                                 [self.topics])
        self.heads = {(topic, partition): head for topic, partition, head in await cur.fetchall()}
