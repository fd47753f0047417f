"""Order views and customer order history (MongoDB) from order-events, enriched per batch.

State is the stored view itself (it carries `last_seq`), loaded by `_id` per batch (agents.read_store);
reference data (product names and images, customer names and emails) comes from one write-model
query per batch. Views and history entries are replaced whole (idempotent): those of orders that
were not stored when the batch loaded them are inserted in one bulk insert (much cheaper than
upserts on the local read store), and any that turns out to exist by then is replaced instead.
A customer's history is one document per order, so workers owning different orders never collide.
The collections written are those of one read-model version (`collections`): the live worker points
them at the serving version before each batch, a rebuild at the version it builds.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg_pool import AsyncConnectionPool
from pymongo import InsertOne, ReplaceOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from agents import failpoints
from agents.engine import Projection
from agents.read_store import bulk_write_unordered, find_by_ids
from agents.read_model_versions import ServingRecord
from domain.read_models import (HISTORY_INDEX, OrderCollections, customer_history_cache_key, history_entry_id,
                             order_cache_key)
from domain.views import ReferenceData, apply_order_event, order_summary

DUPLICATE_KEY = 11000


class OrderViews(Projection):
    name = "order-views"
    sinks = "mongodb+redis"
    skips_loading_new_aggregates = True  # writes never replace a stored view with an older one

    def __init__(self, db: AsyncDatabase, write_db: AsyncConnectionPool | None, redis=None,
                 collections: OrderCollections = OrderCollections(), write_parts: int = 1) -> None:
        self.db = db
        self.write_parts = write_parts   # concurrent bulks per write: >1 for a rebuild's bulk loads
        self.write_db = write_db
        self.redis = redis
        self.collections = collections
        self._stored: set[str] = set()   # ids of the views the last load found

    async def target_serving(self, record: ServingRecord) -> None:
        self.collections = record.order_collections

    def assume_stored(self, order_ids: set[str]) -> None:
        """The next write replaces these orders' documents (a bulk replay knows what it wrote before)."""
        self._stored = set(order_ids)

    async def load(self, aggregate_ids: list[str]) -> dict[str, Any]:
        views = await find_by_ids(self.db[self.collections.views], aggregate_ids)
        self._stored = set(views)
        return views

    def last_seq(self, state: Any) -> int:
        return state["last_seq"] if state else 0

    async def references(self, events: list[Mapping[str, Any]]) -> ReferenceData:
        product_ids: set[str] = set()
        customer_ids: set[str] = set()
        for e in events:
            if e["event_type"] == "OrderCreated":
                customer_ids.add(e["payload"]["customer_id"])
                product_ids.update(i["product_id"] for i in e["payload"]["items"])
            elif e["event_type"] == "ItemAdded":
                product_ids.add(e["payload"]["product_id"])
        refs = ReferenceData()
        if self.write_db is None or not (product_ids or customer_ids):
            return refs
        async with self.write_db.connection() as conn:
            products = await conn.execute("select product_id, name, image_url from products "
                                          "where product_id = any(%s)", (sorted(product_ids),))
            customers = await conn.execute("select customer_id, name, email from customers "
                                           "where customer_id = any(%s)", (sorted(customer_ids),))
            refs.products = {pid: {"name": n, "image_url": img} for pid, n, img in await products.fetchall()}
            refs.customers = {cid: {"name": n, "email": em} for cid, n, em in await customers.fetchall()}
        return refs

    def apply(self, state: Any, event: Mapping[str, Any], refs: ReferenceData) -> Any:
        return apply_order_event(state, event, refs)

    async def write(self, changed: dict[str, Any]) -> dict[str, str]:
        views = list(changed.values())
        await self._replace_whole(self.db[self.collections.views], views)
        failpoints.reach("order-views.between-writes")
        await self._replace_whole(self.db[self.collections.history], [
            {"_id": history_entry_id(v["customer_id"], v["order_id"]), "customer_id": v["customer_id"],
             **order_summary(v)} for v in views])
        if self.redis is not None:
            keys = {order_cache_key(v["order_id"]) for v in views} | {customer_history_cache_key(v["customer_id"])
                                                                       for v in views}
            await self.redis.delete(*keys)
        return {}

    async def _replace_whole(self, collection: AsyncCollection, docs: list[dict[str, Any]]) -> None:
        """Store `docs` whole: insert those of orders that were not loaded, replace those that were, and
        where an insert finds the document stored after all (a replay with fresh progress tables, whose
        new orders are not loaded), replace it only if it is older, so a view never moves back."""
        def is_stored(doc: dict[str, Any]) -> bool:
            return doc.get("order_id", doc["_id"]) in self._stored

        ops = [(d["_id"], ReplaceOne({"_id": d["_id"]}, d, upsert=True) if is_stored(d) else InsertOne(d))
               for d in docs]
        try:
            await bulk_write_unordered(collection, ops, self.write_parts)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if exc.details.get("writeConcernErrors") or any(
                    e.get("code") != DUPLICATE_KEY or not isinstance(ops[e["index"]][1], InsertOne) for e in errors):
                raise
            await bulk_write_unordered(collection, [
                (doc["_id"], ReplaceOne({"_id": doc["_id"], "last_seq": {"$lt": doc["last_seq"]}}, doc))
                for doc in (docs[e["index"]] for e in errors)])


async def ensure_order_indexes(db: AsyncDatabase, collections: OrderCollections = OrderCollections()) -> None:
    """The history's (customer, date desc) index; creating an existing index is a no-op."""
    await db[collections.history].create_index(HISTORY_INDEX, name="customer_date")
