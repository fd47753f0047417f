"""The query API's follower of published heads (real PostgreSQL, LISTEN/NOTIFY): it holds the heads of the
topics it serves, follows their changes, and never loads the rows of other topic prefixes."""
from __future__ import annotations

import asyncio
import time
import uuid

import psycopg

from app.queries.heads import HeadsFollower
from app.settings import Settings
from connectors import postgres


async def follow_while_heads_move(settings: Settings) -> tuple[dict, dict]:
    ours, theirs = f"heads-{uuid.uuid4().hex[:8]}-order-events", f"heads-{uuid.uuid4().hex[:8]}-order-events"
    conninfo = postgres.conninfo(settings)
    follower = HeadsFollower(conninfo, settings.connect_timeout_s, [ours])
    following = asyncio.create_task(follower.run())
    try:
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            async def publish(topic: str, partition: int, head: int) -> None:
                await conn.execute("insert into stream_heads (topic, partition, next_offset) values (%s, %s, %s) "
                                   "on conflict (topic, partition) do update set next_offset = excluded.next_offset",
                                   (topic, partition, head))

            async def seen(expected: dict) -> dict:
                until = time.monotonic() + 10
                while follower.heads != expected and time.monotonic() < until:
                    await asyncio.sleep(0.02)
                return dict(follower.heads)

            await publish(ours, 0, 5)
            await publish(theirs, 0, 7)
            first = await seen({(ours, 0): 5})
            await publish(ours, 1, 3)
            await publish(ours, 0, 9)
            second = await seen({(ours, 0): 9, (ours, 1): 3})
            await conn.execute("delete from stream_heads where topic = any(%s)", [[ours, theirs]])
        return first, second
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)


def test_the_follower_holds_its_own_topics_heads_only_and_follows_them(settings: Settings):
    first, second = asyncio.run(follow_while_heads_move(settings))
    assert len(first) == 1 and list(first.values()) == [5]   # the other prefix's head is not loaded
    assert sorted(second.values()) == [3, 9]
