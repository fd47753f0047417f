"""What `cqrs rebuild` does to each rebuildable read model: create a version, write it through the same
projection code as the live worker, switch reads to it, and drop a retired one.

- order-views (MongoDB): version N is a pair of collections (app.read_models.order_collections); the
  switch is one update of the projection's READ_MODEL_VERSIONS document (the pointer the query API
  and the live workers read).
- product-search (Elasticsearch): version N is the index `<alias>-v<N>`; the switch is one atomic
  alias swap (remove old + add new in a single update_aliases call).

sales-stats is not rebuildable this way: its figures are exact sums over per-order ledgers in Redis,
copied into MongoDB and the search index, and a version of it would have to switch all three at once.
"""
from __future__ import annotations

import time
from typing import Any, Protocol

from elasticsearch import AsyncElasticsearch, NotFoundError
from psycopg_pool import AsyncConnectionPool
from pymongo.asynchronous.database import AsyncDatabase

from agents.engine import Projection
from agents.order_views import OrderViews, ensure_order_indexes
from agents.product_search import SERVING_REFRESH, ProductSearch, aliased_index, create_products_index
from agents.sales_stats import DIRTY
from app.read_model_versions import ServingRecord
from app.read_models import (CACHE_PREFIX, CUSTOMER_HISTORY, ORDER_VIEWS, READ_MODEL_VERSIONS, order_collections,
                             products_index, products_index_version, sales_product_key)

REBUILDABLE = ("order-views", "product-search")
NOT_REBUILDABLE = {
    "sales-stats": "its figures are exact sums over per-order ledgers in Redis that are copied into MongoDB and "
                   "the search index; switching a new version of all three at once is not supported",
}


class RebuildTarget(Protocol):
    projection: str

    async def serving_version(self, record: ServingRecord) -> int: ...

    async def existing_versions(self) -> set[int]: ...

    async def create(self, version: int) -> None: ...

    def writer(self, version: int) -> Projection: ...

    async def ready_to_serve(self, version: int) -> None: ...

    async def switch(self, version: int, fence_id: str, retired: dict[str, Any]) -> bool: ...

    async def after_switch(self, version: int) -> None: ...

    async def drop(self, version: int) -> None: ...


async def record_switch(db: AsyncDatabase, projection: str, version: int, fence_id: str,
                        retired: dict[str, Any]) -> bool:
    """Make `version` the serving one, lift the fence and retire the previous version, in one update that
    only applies while this rebuild's fence is in place."""
    result = await db[READ_MODEL_VERSIONS].update_one(
        {"_id": projection, "fence.id": fence_id},
        {"$set": {"serving": version, "fence": None, "building": None, "switched_at": time.time()},
         **({"$push": {"retired": retired}} if retired else {})})
    return result.modified_count == 1


class OrderViewsTarget:
    projection = "order-views"

    def __init__(self, db: AsyncDatabase, write_db: AsyncConnectionPool, redis) -> None:
        self.db = db
        self.write_db = write_db
        self.redis = redis

    async def serving_version(self, record: ServingRecord) -> int:
        return record.serving

    async def existing_versions(self) -> set[int]:
        names = set(await self.db.list_collection_names())
        versions = {1} if ORDER_VIEWS in names or CUSTOMER_HISTORY in names else set()
        for name in names:
            stem, _, tail = name.rpartition("_v")
            if stem in (ORDER_VIEWS, CUSTOMER_HISTORY) and tail.isdigit():
                versions.add(int(tail))
        return versions

    async def create(self, version: int) -> None:
        await ensure_order_indexes(self.db, order_collections(version))

    def writer(self, version: int) -> Projection:
        return OrderViews(self.db, self.write_db, None, order_collections(version))

    async def ready_to_serve(self, version: int) -> None:
        return None

    async def switch(self, version: int, fence_id: str, retired: dict[str, Any]) -> bool:
        return await record_switch(self.db, self.projection, version, fence_id, retired)

    async def after_switch(self, version: int) -> None:
        """Cached answers were read from the previous version: drop them rather than wait for their TTL."""
        for pattern in (f"{CACHE_PREFIX}order:*", f"{CACHE_PREFIX}customer-orders:*"):
            batch: list[str] = []
            async for key in self.redis.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    await self.redis.delete(*batch)
                    batch.clear()
            if batch:
                await self.redis.delete(*batch)

    async def drop(self, version: int) -> None:
        names = order_collections(version)
        await self.db.drop_collection(names.views)
        await self.db.drop_collection(names.history)


class ProductSearchTarget:
    projection = "product-search"

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
        ids = [hit["_id"] async for hit in self._ids(index)]
        for start in range(0, len(ids), 2000):
            chunk = ids[start:start + 2000]
            async with self.redis.pipeline(transaction=False) as pipe:
                for pid in chunk:
                    pipe.hget(sales_product_key(pid), "purchase_count")
                counts = await pipe.execute()
            operations: list[dict] = []
            for pid, count in zip(chunk, counts):
                if count is not None:
                    operations += [{"update": {"_index": index, "_id": pid}}, {"doc": {"purchase_count": int(count)}}]
            if operations:
                resp = await self.es.bulk(operations=operations, refresh=False)
                if resp.get("errors"):
                    failed = next(i["update"] for i in resp["items"] if i["update"].get("error"))
                    raise RuntimeError(f"search index rejected a purchase count: {failed['error']}")
        await self.es.indices.refresh(index=index)

    async def _ids(self, index: str):
        resp = await self.es.search(index=index, scroll="1m", size=5000, source=False, query={"match_all": {}})
        scroll_id = resp.get("_scroll_id")
        try:
            while resp["hits"]["hits"]:
                for hit in resp["hits"]["hits"]:
                    yield hit
                resp = await self.es.scroll(scroll_id=scroll_id, scroll="1m")
                scroll_id = resp.get("_scroll_id")
        finally:
            if scroll_id:
                await self.es.options(ignore_status=404).clear_scroll(scroll_id=scroll_id)

    async def switch(self, version: int, fence_id: str, retired: dict[str, Any]) -> bool:
        new = products_index(self.alias, version)
        await self.es.indices.refresh(index=new)
        actions: list[dict] = [{"add": {"index": new, "alias": self.alias}}]
        if retired.get("version"):
            actions.insert(0, {"remove": {"index": products_index(self.alias, retired["version"]), "alias": self.alias}})
        await self.es.indices.update_aliases(actions=actions)
        return await record_switch(self.db, self.projection, version, fence_id, retired)

    async def after_switch(self, version: int) -> None:
        """Purchase counts that changed after `ready_to_serve` went to the previous index: mark every
        product for the sales projection to copy again, into the index the alias points at now."""
        index = products_index(self.alias, version)
        batch: list[str] = []
        async for hit in self._ids(index):
            batch.append(hit["_id"])
            if len(batch) >= 5000:
                await self.redis.sadd(DIRTY, *batch)
                batch.clear()
        if batch:
            await self.redis.sadd(DIRTY, *batch)

    async def drop(self, version: int) -> None:
        await self.es.options(ignore_status=404).indices.delete(index=products_index(self.alias, version))
