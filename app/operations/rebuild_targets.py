"""What `cqrs rebuild` does to each rebuildable read model: create a version, write it through the same
projection code as the live worker, switch reads to it, and drop a retired one.

- order-views (MongoDB): version N is a pair of collections (domain.read_models.order_collections); the
  switch is one update of the projection's READ_MODEL_VERSIONS document (the pointer the query API
  and the live workers read).
- product-search (Elasticsearch): version N is the index `<alias>-v<N>`; the switch is one atomic
  alias swap (remove old + add new in a single update_aliases call).
- sales-stats (Redis + MongoDB): version N is the Redis key prefix `sales:v<N>:` (ledgers, day and
  product counters) and the collection `product_stats_v<N>`; the switch is the pointer update. The
  purchase counts in the search index are copies: after the switch the live workers copy the new
  version's, tagged with its number, so an older version's copy can never overwrite them.
"""
from __future__ import annotations

import re
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Protocol, TypeVar

from elasticsearch import AsyncElasticsearch, NotFoundError
from elasticsearch.helpers import async_scan, async_streaming_bulk
from psycopg_pool import AsyncConnectionPool
from pymongo.asynchronous.database import AsyncDatabase

from agents.engine import Projection
from agents.order_views import OrderViews, ensure_order_indexes
from agents.product_search import SERVING_REFRESH, ProductSearch, aliased_index, create_products_index
from agents.sales_stats import DIRTY, SalesStats
from agents.search_bulk import bulk_failures
from agents.read_model_versions import ServingRecord, current
from domain.read_models import (CACHE_PREFIX, CUSTOMER_HISTORY, ORDER_VIEWS, PRODUCT_STATS, READ_MODEL_VERSIONS,
                             SALES_PREFIX, order_collections, product_stats_collection, products_index,
                             products_index_version, sales_prefix, sales_product_key)

REBUILDABLE = ("order-views", "product-search", "sales-stats")
SCAN_BATCH = 1000
BULK_LOAD_PARTS = 4   # concurrent bulks per flush of a rebuild: FerretDB runs a bulk's statements one by one
T = TypeVar("T")


class RebuildTarget(Protocol):
    projection: str
    flush_chunk: int  # states per bulk write

    async def serving_version(self, record: ServingRecord) -> int: ...

    async def existing_versions(self) -> set[int]: ...

    async def create(self, version: int) -> None: ...

    def writer(self, version: int) -> Projection: ...

    async def ready_to_serve(self, version: int) -> None: ...

    async def switch(self, version: int, fence_id: str, retired: dict[str, Any]) -> bool: ...

    async def after_switch(self, version: int) -> None: ...

    async def drop(self, version: int) -> None: ...


async def batched(items: AsyncIterable[T], size: int) -> AsyncIterator[list[T]]:
    """`items` in lists of at most `size`."""
    batch: list[T] = []
    async for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def scan_keys(redis, pattern: str) -> AsyncIterator[list[str]]:
    """Every key matching `pattern`, in batches of at most SCAN_BATCH."""
    return batched(redis.scan_iter(match=pattern, count=SCAN_BATCH), SCAN_BATCH)


async def record_switch(db: AsyncDatabase, projection: str, version: int, fence_id: str,
                        retired: dict[str, Any]) -> bool:
    """Make `version` the serving one, lift the fence and retire the previous version, in one update that
    only applies while this rebuild's fence is in place."""
    result = await db[READ_MODEL_VERSIONS].update_one(
        {"_id": projection, "fence.id": fence_id},
        {"$set": {"serving": version, "fence": None, "building": None, "switched_at": time.time()},
         **({"$push": {"retired": retired}} if retired else {})})
    return result.modified_count == 1


def collection_versions(names: list[str], stems: tuple[str, ...]) -> set[int]:
    """The versions present among collection `names`: 1 for a bare stem, N for `<stem>_vN`."""
    versions = set()
    for name in names:
        stem, _, tail = name.rpartition("_v")
        if name in stems:
            versions.add(1)
        elif stem in stems and tail.isdigit():
            versions.add(int(tail))
    return versions


class PointerSwitched:
    """A read model whose readers and writers find their version through the pointer document alone."""

    projection: str
    db: AsyncDatabase

    async def serving_version(self, record: ServingRecord) -> int:
        return record.serving

    async def switch(self, version: int, fence_id: str, retired: dict[str, Any]) -> bool:
        return await record_switch(self.db, self.projection, version, fence_id, retired)


class OrderViewsTarget(PointerSwitched):
    projection = "order-views"
    flush_chunk = 20_000

    def __init__(self, db: AsyncDatabase, write_db: AsyncConnectionPool, redis) -> None:
        self.db = db
        self.write_db = write_db
        self.redis = redis

    async def existing_versions(self) -> set[int]:
        return collection_versions(await self.db.list_collection_names(), (ORDER_VIEWS, CUSTOMER_HISTORY))

    async def create(self, version: int) -> None:
        await ensure_order_indexes(self.db, order_collections(version))

    def writer(self, version: int) -> Projection:
        return OrderViews(self.db, self.write_db, None, order_collections(version), write_parts=BULK_LOAD_PARTS)

    async def ready_to_serve(self, version: int) -> None:
        return None

    async def after_switch(self, version: int) -> None:
        """Cached answers were read from the previous version: drop them rather than wait for their TTL."""
        for pattern in (f"{CACHE_PREFIX}order:*", f"{CACHE_PREFIX}customer-orders:*"):
            async for keys in scan_keys(self.redis, pattern):
                await self.redis.delete(*keys)

    async def drop(self, version: int) -> None:
        names = order_collections(version)
        await self.db.drop_collection(names.views)
        await self.db.drop_collection(names.history)


class ProductSearchTarget:
    projection = "product-search"
    flush_chunk = 20_000

    def __init__(self, db: AsyncDatabase, es: AsyncElasticsearch, redis, alias: str) -> None:
        self.db = db
        self.es = es
        self.redis = redis
        self.alias = alias

    async def serving_version(self, record: ServingRecord) -> int:
        """The alias is the truth for the search index: the version it points at."""
        try:
            index = await aliased_index(self.es, self.alias)
        except NotFoundError:
            return 0
        version = products_index_version(self.alias, index)
        if version is None:
            raise RuntimeError(f"search alias {self.alias!r} points at {index!r}, not a versioned index "
                               f"{products_index(self.alias, 1)!r}, {products_index(self.alias, 2)!r}, ...")
        return version

    async def existing_versions(self) -> set[int]:
        found = await self.es.indices.get(index=f"{self.alias}-v*", allow_no_indices=True, expand_wildcards="all")
        return {v for name in found if (v := products_index_version(self.alias, name)) is not None}

    async def create(self, version: int) -> None:
        await create_products_index(self.es, products_index(self.alias, version), refresh_interval="-1")

    def writer(self, version: int) -> Projection:
        return ProductSearch(self.es, self.alias, products_index(self.alias, version))

    async def ready_to_serve(self, version: int) -> None:
        """Turn refresh back on, make everything searchable, and fill in the purchase counts the sales
        projection keeps (in Redis) for the products of this version."""
        index = products_index(self.alias, version)
        await self.es.indices.put_settings(index=index, settings={"refresh_interval": SERVING_REFRESH})
        await self.es.indices.refresh(index=index)
        sales = await current(self.db[READ_MODEL_VERSIONS], "sales-stats")

        async def purchase_counts():
            async for chunk in self._id_batches(index):
                async with self.redis.pipeline(transaction=False) as pipe:
                    for pid in chunk:
                        pipe.hmget(sales_product_key(pid, sales.sales_prefix), "purchase_count", "version")
                    counts = await pipe.execute()
                for pid, (count, counter_version) in zip(chunk, counts):
                    if count is not None:
                        yield {"_op_type": "update", "_index": index, "_id": pid,
                               "doc": {"purchase_count": int(count), "sales_version": sales.serving,
                                       "purchase_count_version": int(counter_version or 0)}}

        async for _, error in async_streaming_bulk(self.es, purchase_counts(), chunk_size=SCAN_BATCH,
                                                   raise_on_error=False, yield_ok=False, refresh=False):
            # Only failed documents are yielded: stop at the first (an outage status is raised as one).
            raise RuntimeError(f"search index rejected a purchase count: {bulk_failures([error])}")
        await self.es.indices.refresh(index=index)

    async def _id_batches(self, index: str):
        """The ids of every document of `index`, in batches of at most SCAN_BATCH (a scroll)."""
        hits = async_scan(self.es, index=index, scroll="1m", size=SCAN_BATCH, source=False,
                          query={"query": {"match_all": {}}})
        async for ids in batched((hit["_id"] async for hit in hits), SCAN_BATCH):
            yield ids

    async def switch(self, version: int, fence_id: str, retired: dict[str, Any]) -> bool:
        new = products_index(self.alias, version)
        await self.es.indices.refresh(index=new)
        actions: list[dict] = [{"add": {"index": new, "alias": self.alias}}]
        if retired.get("version"):
            old = products_index(self.alias, retired["version"])
            actions.insert(0, {"remove": {"index": old, "alias": self.alias}})
        await self.es.indices.update_aliases(actions=actions)
        return await record_switch(self.db, self.projection, version, fence_id, retired)

    async def after_switch(self, version: int) -> None:
        """Purchase counts that changed after `ready_to_serve` went to the previous index: mark every
        product for the sales projection to copy again, into the index the alias points at now."""
        dirty = (await current(self.db[READ_MODEL_VERSIONS], "sales-stats")).sales_prefix + DIRTY
        async for ids in self._id_batches(products_index(self.alias, version)):
            await self.redis.sadd(dirty, *ids)

    async def drop(self, version: int) -> None:
        await self.es.options(ignore_status=404).indices.delete(index=products_index(self.alias, version))


class SalesStatsTarget(PointerSwitched):
    projection = "sales-stats"
    flush_chunk = 2_000   # orders per ledger script: each call holds Redis, which live workers share

    def __init__(self, db: AsyncDatabase, redis, alias: str) -> None:
        self.db = db
        self.redis = redis
        self.alias = alias

    async def existing_versions(self) -> set[int]:
        return collection_versions(await self.db.list_collection_names(), (PRODUCT_STATS,))

    async def create(self, version: int) -> None:
        return None   # keys and the collection come into being with their first write

    def writer(self, version: int) -> SalesStats:
        """Writes the version's ledgers and counters; product stats are copied once, in `ready_to_serve`
        (copying them after every write would update each popular product thousands of times), and the
        search index's purchase counts by the live workers after the switch."""
        return SalesStats(self.redis, self.db, None, self.alias, sync_limit=5_000, version=version,
                          copy_on_write=False)

    async def ready_to_serve(self, version: int) -> None:
        """Copy every product's figures into the version's product-stats collection."""
        writer = self.writer(version)
        dirty = writer.prefix + DIRTY
        rounds = 0
        while await self.redis.scard(dirty):
            rounds += 1
            if rounds > 1000:
                raise RuntimeError(f"{dirty} still holds {await self.redis.scard(dirty)} products after "
                                   f"{rounds - 1} copies")
            await writer.sync_products()

    async def after_switch(self, version: int) -> None:
        """Mark every product of the new version for the live workers to copy its purchase count into the
        search index (tagged with this version)."""
        prefix = sales_prefix(version)
        async for keys in scan_keys(self.redis, f"{prefix}product:*"):
            await self.redis.sadd(prefix + DIRTY, *(k[len(prefix) + len("product:"):] for k in keys))

    async def drop(self, version: int) -> None:
        prefix = sales_prefix(version)
        later_versions = re.compile(rf"^{re.escape(SALES_PREFIX)}v[0-9]+:")
        async for keys in scan_keys(self.redis, f"{prefix}*"):
            if version == 1:   # version 1's prefix is also the start of every later version's
                keys = [k for k in keys if not later_versions.match(k)]
            if keys:
                await self.redis.delete(*keys)
        await self.db.drop_collection(product_stats_collection(version))
