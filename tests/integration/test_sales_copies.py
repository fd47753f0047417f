"""The sales projection's copies into the read store coalesce: the counters in Redis are exact after every
batch, while a hot product's figures are copied at most once per `copy_interval_s` (real Redis and
MongoDB, the worker's own clients)."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

from agents.sales_stats import SalesStats
from app.settings import Settings
from connectors import mongo
from connectors import redis as redis_connector
from domain.read_models import sales_prefix
from domain.views import apply_order_facts

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=timezone.utc)


def created(order_id: str, product_id: str) -> tuple[int, int, object]:
    """The state an OrderCreated of one unit of `product_id` leaves for the write (read seq 0, new seq 1)."""
    facts = apply_order_facts(None, {"event_type": "OrderCreated", "aggregate_id": order_id, "occurred_at": T0,
                                     "payload": {"status": "pending", "total": "10.00",
                                                 "items": [{"product_id": product_id, "quantity": 1}]}})
    return 0, 1, facts


async def copies_of_three_orders(settings: Settings, interval_s: float) -> tuple[list[int], int]:
    """Three batches of one order each for the same product, the third after the interval: what MongoDB held
    after each batch, and what Redis counted."""
    version = 800_000 + uuid.uuid4().int % 100_000
    client = mongo.async_mongo_client(settings)
    db = client[f"cqrs_copies_{uuid.uuid4().hex[:8]}"]
    redis = redis_connector.async_redis_client(settings)
    stats = SalesStats(redis, db, None, version=version, copy_interval_s=interval_s)
    product, seen = f"p-{uuid.uuid4().hex[:8]}", []
    try:
        for n in range(3):
            if n == 2:
                await asyncio.sleep(interval_s)
            await stats.write({f"o-{n}-{product}": created(f"o-{n}-{product}", product)})
            doc = await db[stats.stats].find_one({"_id": product})
            seen.append((doc or {}).get("purchase_count", 0))
        counted = int(await redis.hget(f"{sales_prefix(version)}product:{product}", "purchase_count") or 0)
        return seen, counted
    finally:
        await client.drop_database(db.name)
        keys = [k async for k in redis.scan_iter(match=f"{sales_prefix(version)}*", count=1000)]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
        await client.close()


def test_a_hot_product_is_copied_once_per_interval_while_redis_counts_every_batch(settings: Settings):
    seen, counted = asyncio.run(copies_of_three_orders(settings, interval_s=1.0))
    assert counted == 3
    assert seen == [1, 1, 3]  # the second batch's figure waits for the next copy, which carries both


def test_without_an_interval_every_batch_is_copied(settings: Settings):
    seen, counted = asyncio.run(copies_of_three_orders(settings, interval_s=0.0))
    assert (seen, counted) == ([1, 2, 3], 3)
