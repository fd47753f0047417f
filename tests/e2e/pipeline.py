"""An isolated pipeline for end-to-end tests: workers of the three projections writing into their own read
models (own topics, read database, search alias and Redis database), the traffic that feeds them, and
the truth their read models must equal, derived from the write model."""
from __future__ import annotations

import random
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

from elasticsearch.helpers import scan

from app import processes
from app.read_models import sales_day_key
from app.settings import Settings
from app.projections import PROJECTIONS
from connectors import elasticsearch, kafka, mongo, postgres, redis
from tests.e2e.conftest import (create_customer, create_order, create_product, deadline, serving_order_collections,
                                serving_record)

SETTLE_S = 180


class Pipeline:
    """Workers of the three projections writing into one isolated set of read models."""

    def __init__(self, base: Settings, prefix: str, name: str, redis_db: int, log_dir: Path) -> None:
        self.prefix, self.name, self.log_dir = prefix, name, log_dir
        self.env = {"TOPIC_PREFIX": prefix, "MONGO_DATABASE": f"cqrs_{name}", "ES_PRODUCTS_ALIAS": f"products-{name}",
                    "REDIS_URL": f"redis://127.0.0.1:6379/{redis_db}", "PROJECTION_START": "earliest",
                    "PROJECTION_BATCH_WAIT_S": "0.1", "PROJECTION_BATCH_SIZE": "200"}
        self.settings = Settings(topic_prefix=prefix, mongo_database=f"cqrs_{name}",
                                 es_products_alias=f"products-{name}", redis_url=self.env["REDIS_URL"])
        self.workers: dict[str, list[processes.AppProcess]] = {}

    def start(self, projection: str, group: str, count: int = 1) -> None:
        env = {**self.env, "PROJECTION_GROUP_SUFFIX": f"-{group}"}
        self.workers.setdefault(projection, []).extend(
            processes.start(f"{self.name}-{group}-{projection}-{uuid.uuid4().hex[:4]}",
                            ["worker", projection], log_dir=self.log_dir, env=env, ready_path=None)
            for _ in range(count))

    def start_all(self, group: str) -> None:
        for projection in PROJECTIONS:
            self.start(projection, group)

    def stop(self) -> None:
        for procs in self.workers.values():
            for p in procs:
                p.stop()
        self.workers.clear()

    def wait_caught_up(self, group: str, timeout: float = SETTLE_S) -> None:
        """Until every projection's group has committed the end offset of each of its partitions."""
        admin = kafka.admin_client(self.settings)
        from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition

        probe = Consumer({**kafka.base_config(self.settings), "group.id": f"probe-{uuid.uuid4()}"})
        topics = {"order-views": ["order-events"], "product-search": ["product-events"],
                  "sales-stats": ["order-events"]}
        end = deadline(timeout)
        try:
            for projection, names in topics.items():
                group_id = f"cqrs-{projection}-{group}"
                tps = [TopicPartition(self.prefix + t, p) for t in names for p in range(self.settings.topic_partitions)]
                ends = {(tp.topic, tp.partition): probe.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
                while True:
                    res = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group_id, tps)])
                    got = {(tp.topic, tp.partition): tp.offset for tp in res[group_id].result(10).topic_partitions}
                    if all(got.get(k, -1) >= v for k, v in ends.items() if v > 0):
                        break
                    for p in self.workers.get(projection, []):
                        assert p.proc.poll() is None, f"{p.name} exited: {p.log_tail()}"
                    assert time.monotonic() < end, f"{group_id} not caught up: {got} < {ends}"
                    time.sleep(0.5)
        finally:
            probe.close()
        time.sleep(1.0)  # the last batch's sink writes finish before its offsets are committed

    def snapshot(self) -> dict:
        """Every read model of this pipeline, normalised for comparison."""
        client = mongo.mongo_client(self.settings)
        db = mongo.read_database(self.settings, client)
        es = elasticsearch.es_client(self.settings)
        r = redis.redis_client(self.settings)
        try:
            es.indices.refresh(index=self.settings.es_products_alias)
            hits = list(scan(es, index=self.settings.es_products_alias, query={"query": {"match_all": {}}}))
            names = serving_order_collections(db)
            sales = serving_record(db, "sales-stats")
            return {
                "order_views": sorted(db[names.views].find(), key=lambda d: d["_id"]),
                "history": sorted(db[names.history].find(), key=lambda d: d["_id"]),
                "product_stats": sorted(({k: v for k, v in d.items() if k != "version"}
                                         for d in db[sales.product_stats].find()), key=lambda d: d["_id"]),
                "search": sorted((h["_id"], h["_source"]) for h in hits),
                "sales": {k.removeprefix(sales.sales_prefix): r.hgetall(k)
                          for k in sorted(r.scan_iter(f"{sales.sales_prefix}day:*"))},
            }
        finally:
            client.close()

    def cleanup(self) -> None:
        client = mongo.mongo_client(self.settings)
        client.drop_database(self.settings.mongo_database)
        client.close()
        es = elasticsearch.es_client(self.settings)
        found = es.indices.get(index=f"{self.settings.es_products_alias}-v*", allow_no_indices=True)
        for name in found:  # deleting by wildcard is refused by default
            es.options(ignore_status=404).indices.delete(index=name)
        redis.redis_client(self.settings).flushdb()


def place_orders(client, rng: random.Random, orders: int, made: dict) -> dict:
    """Commands on the isolated topics; everything created is also added to `made` (all the module's
    aggregates, since every pipeline replays the topics from the start)."""
    customers = [create_customer(client, name=f"Guarantee {i}") for i in range(4)]
    products = [create_product(client, price=f"{rng.randint(1000, 5000) / 100:.2f}", stock=10_000,
                               name=f"Guarantee product {i}", category="Test") for i in range(5)]
    order_ids = []
    for _ in range(orders):
        lines = [(p, rng.randint(1, 3)) for p in rng.sample(products, rng.randint(1, 3))]
        oid = create_order(client, rng.choice(customers), lines)["order_id"]
        order_ids.append(oid)
        roll = rng.random()
        if roll < 0.2:
            client.post(f"/api/orders/{oid}/cancel", json={})
        elif roll < 0.5:
            client.post(f"/api/orders/{oid}/ship", json={})
            if roll < 0.35:
                client.post(f"/api/orders/{oid}/deliver")
        elif roll < 0.7:
            extra = rng.choice(products)
            client.post(f"/api/orders/{oid}/items", json={"product_id": extra, "quantity": 1})
    for key, values in (("customers", customers), ("products", products), ("orders", order_ids)):
        made[key].extend(values)
    return made


def truth(settings: Settings, made: dict) -> dict:
    """What the read models must say, computed from the write model."""
    with postgres.connect(settings) as conn:
        orders = {r[0]: {"status": r[1], "total": f"{r[2]:.2f}", "customer_id": r[3], "customer_name": r[4]}
                  for r in conn.execute("select o.order_id, o.status, o.total, o.customer_id, c.name from orders o "
                                        "join customers c using (customer_id) where o.order_id = any(%s)",
                                        (made["orders"],))}
        for oid in orders:
            orders[oid]["items"] = sorted((r[0], r[1], f"{r[2]:.2f}") for r in conn.execute(
                "select product_id, quantity, unit_price from order_items where order_id = %s", (oid,)))
        stats = {pid: (0, 0) for pid in made["products"]}
        for oid, o in orders.items():
            if o["status"] != "cancelled":
                for pid, qty, _ in o["items"]:
                    count, units = stats[pid]
                    stats[pid] = (count + 1, units + qty)
        stock = dict(conn.execute("select product_id, available from stock where product_id = any(%s)",
                                  (made["products"],)).fetchall())
    live = [o for o in orders.values() if o["status"] != "cancelled"]
    cents = sum(int(Decimal(o["total"]) * 100) for o in live)
    return {"orders": orders, "stats": stats, "stock": stock, "sales": (len(live), cents)}


def check_against_truth(pipeline: Pipeline, truth: dict, timeout: float = 30.0) -> None:
    """The read models equal the truth, allowing `timeout` for copies made by periodic upkeep."""
    end = deadline(timeout)
    while True:
        try:
            return compare(pipeline, truth)
        except AssertionError:
            if time.monotonic() > end:
                raise
            time.sleep(1.0)


def compare(pipeline: Pipeline, truth: dict) -> None:
    snap = pipeline.snapshot()
    views = {v["_id"]: v for v in snap["order_views"]}
    assert set(views) == set(truth["orders"]), "order views are not exactly the orders of the write model"
    for oid, want in truth["orders"].items():
        v = views[oid]
        assert (v["status"], v["total"], v["customer_id"], v["customer_name"]) == (
            want["status"], want["total"], want["customer_id"], want["customer_name"]), oid
        assert sorted((i["product_id"], i["quantity"], i["unit_price"]) for i in v["items"]) == want["items"], oid
    history = {(h["customer_id"], h["order_id"]): h for h in snap["history"]}
    assert len(history) == len(snap["history"]) == len(truth["orders"]), "one history entry per order"
    for oid, want in truth["orders"].items():
        assert history[(want["customer_id"], oid)]["status"] == want["status"], oid
    stats = {d["_id"]: (d["purchase_count"], d["units_sold"]) for d in snap["product_stats"]}
    for pid, want in truth["stats"].items():
        assert stats.get(pid, (0, 0)) == want, pid
    search = dict(snap["search"])
    for pid, available in truth["stock"].items():
        assert search[pid]["stock"] == available and search[pid]["purchase_count"] == truth["stats"][pid][0]
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    sales = snap["sales"].get(sales_day_key(day, prefix=""), {})
    assert (int(sales.get("orders", 0)), int(sales.get("revenue_cents", 0))) == truth["sales"]
