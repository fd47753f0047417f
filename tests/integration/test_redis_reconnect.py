"""After a Redis restart every pooled connection is dead; the connector's clients answer anyway, each
call retried once at once on a fresh connection (the query cache used to fail one read per pooled
connection, and bypass the cache for 5 s each time)."""
from __future__ import annotations

import asyncio

from connectors import redis
from tests.conftest import stack_command

CALLS = 20


def test_pooled_connections_survive_a_redis_restart(stack):
    async def main() -> list[str]:
        client = redis.async_redis_client(stack)
        sync_client = redis.redis_client(stack)
        try:
            await asyncio.gather(*(client.get(f"reconnect-probe-{i}") for i in range(CALLS)))  # fill the pool
            sync_client.get("reconnect-probe")
            await asyncio.to_thread(stack_command, "down", "redis")
            await asyncio.to_thread(stack_command, "up", "redis")

            async def one(i: int) -> str:
                try:
                    async with asyncio.timeout(1.0):
                        await client.get(f"reconnect-probe-{i}")
                    return "ok"
                except Exception as exc:  # noqa: BLE001 - the outcome is what is asserted
                    return type(exc).__name__

            outcomes = await asyncio.gather(*(one(i) for i in range(CALLS)))
            outcomes.append("ok" if sync_client.get("reconnect-probe") is None else "unexpected value")
            return outcomes
        finally:
            await client.aclose()
            sync_client.close()

    assert asyncio.run(main()) == ["ok"] * (CALLS + 1)
