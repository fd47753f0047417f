"""(c) of `make bench-projections`: each sink's bulk ceiling without the pipeline (MongoDB, Elasticsearch,
Redis), measured with documents shaped like the read models'. Methods of the benchmark run."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from benchmarks.projection_run import BenchError

BATCH = 1000   # documents (or orders) per bulk call


def numbered_copy(items: list, i: int, k: int, salt: str) -> dict:
    """Document k of batch i: the samples repeat, each copy under an _id of its own."""
    doc = dict(items[(i * BATCH + k) % len(items)])
    doc["_id"] = f"{salt}-{i * BATCH + k}"
    return doc


class SinkCeilings:
    def sample_documents(self) -> tuple[list[dict], list[dict], list[tuple[dict, str]]]:
        """Order views, product documents and sales contributions built from the generated events."""
        from domain.views import (
            ReferenceData,
            apply_order_event,
            apply_order_facts,
            apply_product_event,
        )

        refs = ReferenceData()
        views, products, orders = [], [], []
        for e in self.stream.events:
            env = {**e.envelope, "payload": e.envelope["payload"][1]}
            if env["event_type"] == "OrderCreated":
                views.append(apply_order_event(None, env, refs))
                orders.append(apply_order_facts(None, env))
            elif env["event_type"] == "ProductCreated":
                products.append(apply_product_event(None, env))
        return views, products, orders

    def timed_batches(self, label: str, unit: str, batches: Iterable[int], write: Callable[[int], int]) -> range:
        """Run write(i) for each batch until done or --ceiling-seconds pass; records documents per second and
        returns the batches written."""
        limit = self.args.ceiling_seconds
        done, count, t0 = 0, 0, time.perf_counter()
        for i in batches:
            done += write(i)
            count += 1
            if time.perf_counter() - t0 > limit:
                break
        self.results.ceilings[label] = (done, time.perf_counter() - t0, unit)
        return range(count)

    def run_ceilings(self) -> None:
        """(c): one sink at a time, so no sink's figure includes another's load."""
        views, products, orders = self.sample_documents()
        batches = range(0, max(1, self.args.ceiling_docs // BATCH))
        self.mongo_ceilings(views, batches)
        self.elasticsearch_ceilings(products, batches)
        self.redis_ceilings(orders, batches)

    def mongo_ceilings(self, views: list[dict], batches: range) -> None:
        """Order views upserted under new _ids and then over them, customer history entries, and
        insert_many for reference; the scratch collections are dropped after."""
        from pymongo import ReplaceOne

        from connectors import mongo
        from domain.views import order_summary

        client = mongo.mongo_client(self.settings)
        try:
            coll = client[self.settings.mongo_database]["ceiling_order_views"]

            def mongo_write(status: str) -> Callable[[int], int]:
                def write(i: int) -> int:
                    docs = [{**numbered_copy(views, i, k, "order"), "status": status} for k in range(BATCH)]
                    coll.bulk_write([ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in docs], ordered=False)
                    return len(docs)
                return write

            written = self.timed_batches("MongoDB ReplaceOne upserts, new _ids", "docs", batches,
                                         mongo_write("pending"))
            self.timed_batches("MongoDB ReplaceOne upserts, existing _ids", "docs", written, mongo_write("shipped"))
            history = client[self.settings.mongo_database]["ceiling_customer_history"]

            def history_write(i: int) -> int:
                docs = [numbered_copy(views, i, k, "order") for k in range(BATCH)]
                history.bulk_write([ReplaceOne({"_id": f"{d['customer_id']}:{d['_id']}"}, {
                    "customer_id": d["customer_id"], **order_summary(d)}, upsert=True) for d in docs], ordered=False)
                return len(docs)

            self.timed_batches("MongoDB ReplaceOne upserts (customer history entries)", "docs", batches, history_write)

            def insert_write(i: int) -> int:
                coll.insert_many([numbered_copy(views, i, k, "inserted") for k in range(BATCH)], ordered=False)
                return BATCH

            self.timed_batches("MongoDB insert_many, new _ids (for reference)", "docs", batches, insert_write)
            coll.drop()
            history.drop()
        finally:
            client.close()

    def elasticsearch_ceilings(self, products: list[dict], batches: range) -> None:
        """Product documents as update+upsert actions under new ids and then over them; the scratch
        index is deleted after."""
        from elasticsearch.helpers import bulk as es_bulk

        from agents.search_bulk import bulk_failures
        from connectors import elasticsearch
        from domain.read_models import PRODUCTS_MAPPING

        es = elasticsearch.es_client(self.settings, request_timeout=120)
        index = f"{self.settings.es_products_alias}-ceiling"
        try:
            es.indices.create(index=index, mappings=PRODUCTS_MAPPING,
                              settings={"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "1s"})

            def es_write(stock: int) -> Callable[[int], int]:
                def write(i: int) -> int:
                    actions: list[dict] = []
                    for k in range(BATCH):
                        doc = numbered_copy(products, i, k, "product")
                        pid = doc.pop("_id")
                        doc.update(product_id=pid, in_stock=stock > 0, updated_at=f"2024-01-01T00:00:{stock % 60:02d}Z")
                        actions.append({"_op_type": "update", "_index": index, "_id": pid, "retry_on_conflict": 3,
                                        "doc": {k2: v for k2, v in doc.items() if k2 != "purchase_count"},
                                        "upsert": doc})
                    _, errors = es_bulk(es, actions, chunk_size=BATCH, raise_on_error=False, refresh=False)
                    if errors:
                        pid, error = next(iter(bulk_failures(errors).items()))
                        raise BenchError(f"Elasticsearch _bulk rejected {len(errors)} document(s), {pid}: {error}")
                    return BATCH
                return write

            written = self.timed_batches("Elasticsearch _bulk update+upsert, new ids", "docs", batches,
                                         es_write(100))
            self.timed_batches("Elasticsearch _bulk update, existing ids", "docs", written, es_write(99))
        finally:
            es.options(ignore_status=404).indices.delete(index=index)
            es.close()

    def redis_ceilings(self, orders: list, batches: range) -> None:
        """The sales worker's Lua script, and plain pipelined HINCRBYs to compare it with; the scratch
        keys are removed after."""
        from agents.sales_stats import APPLY_CONTRIBUTIONS, DAY_TTL_S, LEDGER_TTL_S
        from connectors import redis
        from domain.views import sales_contributions

        r = redis.redis_client(self.settings)
        try:
            script = r.register_script(APPLY_CONTRIBUTIONS)
            prefix = "ceiling:sales:"

            def lua_write(i: int) -> int:
                args: list[Any] = [prefix, LEDGER_TTL_S, DAY_TTL_S]
                for k in range(BATCH):
                    facts = orders[(i * BATCH + k) % len(orders)]
                    contributions = sales_contributions(facts)
                    args += [f"order-{i * BATCH + k}", 0, 1, json.dumps(facts.as_ledger()), len(contributions)]
                    for composite, amount in contributions.items():
                        args += [*composite.split("|", 1), amount]
                script(args=args)
                return BATCH

            def hincrby_write(i: int) -> int:
                pipe = r.pipeline(transaction=False)
                for k in range(BATCH):
                    for composite, amount in sales_contributions(orders[(i * BATCH + k) % len(orders)]).items():
                        key, fld = composite.split("|", 1)
                        pipe.hincrby(f"ceiling:hincr:{key}", fld, amount)
                pipe.execute()
                return BATCH

            self.timed_batches("Redis sales Lua script, 1,000 orders per call", "orders", batches, lua_write)
            self.timed_batches("Redis pipelined HINCRBY, 1,000 orders per round trip", "orders", batches,
                               hincrby_write)
            for key in r.scan_iter("ceiling:*", count=1000):
                r.unlink(key)
        finally:
            r.close()
