"""The sales projection's copies into the read stores: they coalesce (the counters in Redis are exact after
every batch, while a hot product's figures are copied at most once per `copy_interval_s`), and a copy the
search index took is done without reading it back (real Redis, MongoDB and Elasticsearch, the worker's own
clients)."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

from agents.product_search import create_products_index
from agents.sales_stats import DIRTY, SalesStats
from app.settings import Settings
from connectors import elasticsearch, mongo
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


async def copy_into_search(settings: Settings) -> tuple[dict, list[str], int]:
    """One order of an indexed product, copied at once: the document's sales fields, what stays dirty, and
    how many document reads the index served meanwhile."""
    version = 800_000 + uuid.uuid4().int % 100_000
    alias, product = f"products-copies-{uuid.uuid4().hex[:8]}", f"p-{uuid.uuid4().hex[:8]}"
    client = mongo.async_mongo_client(settings)
    db = client[f"cqrs_copies_{uuid.uuid4().hex[:8]}"]
    redis = redis_connector.async_redis_client(settings)
    es = elasticsearch.async_es_client(settings)
    try:
        await create_products_index(es, f"{alias}-v1")
        await es.indices.put_alias(index=f"{alias}-v1", name=alias)
        await es.index(index=alias, id=product, document={"product_id": product, "in_stock": True}, refresh=True)
        reads_before = (await es.indices.stats(index=alias, metric="get"))["_all"]["total"]["get"]["total"]
        stats = SalesStats(redis, db, es, alias=alias, version=version)
        await stats.write({f"o-{product}": created(f"o-{product}", product)})
        reads = (await es.indices.stats(index=alias, metric="get"))["_all"]["total"]["get"]["total"] - reads_before
        fields = ("purchase_count", "sales_version", "purchase_count_version")
        doc = (await es.get(index=alias, id=product, source_includes=list(fields)))["_source"]
        return doc, sorted(await redis.smembers(sales_prefix(version) + DIRTY)), reads
    finally:
        await es.indices.delete(index=f"{alias}-v1", ignore_unavailable=True)
        await client.drop_database(db.name)
        keys = [k async for k in redis.scan_iter(match=f"{sales_prefix(version)}*", count=1000)]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
        await client.close()
        await es.close()


def test_a_copy_the_search_index_took_is_done_without_reading_it_back(settings: Settings):
    doc, dirty, reads = asyncio.run(copy_into_search(settings))
    assert doc["purchase_count"] == 1 and doc["purchase_count_version"] == 1 and doc["sales_version"] > 0
    assert dirty == []
    # The mget that finds the sequence number to compare, and the update's own read of the document;
    # a read-back would be a realtime read of a document not refreshed yet, which refreshes the shard.
    assert reads == 2
