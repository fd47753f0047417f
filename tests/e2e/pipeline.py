"""An isolated pipeline for end-to-end tests: workers of the three projections writing into their own read
models (own topics, read database, search alias and Redis database), the traffic that feeds them, and
the truth their read models must equal, derived from the write model."""
from __future__ import annotations

import json
import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from elasticsearch.helpers import scan

from app.operations import processes
from domain.read_models import sales_day_key
from app.settings import Settings
from agents.projections import PROJECTIONS
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
        """Until every projection's group has committed the end offset of each of its partitions, as they
        are once the relay has published every event committed on the pipeline's topics so far."""
        self.wait_published(timeout)
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
        # The last batch's sink writes finish before its offsets are committed, but a copy of the sales
        # figures held back by SALES_COPY_INTERVAL_S goes out at the worker's next upkeep tick.
        time.sleep(self.settings.projection_tick_s + self.settings.sales_copy_interval_s + 0.5)

    def wait_published(self, timeout: float) -> None:
        """Until the outbox holds no unpublished event for the pipeline's topics (commands answer before
        the relay publishes their events)."""
        end = deadline(timeout)
        with postgres.connect(self.settings) as conn:
            while conn.execute("select count(*) from outbox where published_at is null and topic like %s",
                               (self.prefix + "%",)).fetchone()[0]:
                assert time.monotonic() < end, f"events on {self.prefix}* not published within {timeout:.0f}s"
                time.sleep(0.1)

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
                # purchase_count_version orders concurrent copies (like product stats' version): a replay
                # may copy the same figures again under a higher one.
                "search": sorted((h["_id"], {k: v for k, v in h["_source"].items() if k != "purchase_count_version"})
                                 for h in hits),
                "sales": {k.removeprefix(sales.sales_prefix): r.hgetall(k)
                          for k in sorted(r.scan_iter(f"{sales.sales_prefix}day:*"))},
            }
        finally:
            client.close()

    def ledgers(self, order_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The sales projection's per-order ledger (serving version) of each order that has one:
        {order id: {"seq": int, "state": dict}}."""
        client = mongo.mongo_client(self.settings)
        try:
            prefix = serving_record(mongo.read_database(self.settings, client), "sales-stats").sales_prefix
        finally:
            client.close()
        r = redis.redis_client(self.settings)
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(order_ids), 1000):
            chunk = order_ids[start:start + 1000]
            pipe = r.pipeline(transaction=False)
            for oid in chunk:
                pipe.hmget(f"{prefix}ledger:{oid}", "seq", "state")
            for oid, (seq, state) in zip(chunk, pipe.execute()):
                if seq is not None:
                    found[oid] = {"seq": int(seq), "state": json.loads(state) if state else None}
        return found

    def collections(self) -> set[str]:
        """The collections of the pipeline's read database."""
        client = mongo.mongo_client(self.settings)
        try:
            return set(mongo.read_database(self.settings, client).list_collection_names())
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
    """What the read models must say, computed from the write model: per order its status, total,
    customer, lines, version (= the last event's sequence) and creation time; per product its sales
    figures, stock, name and price; the count and revenue (cents) of the orders that are not cancelled."""
    with postgres.connect(settings) as conn:
        orders = {r[0]: {"status": r[1], "total": f"{r[2]:.2f}", "customer_id": r[3], "customer_name": r[4],
                         "version": r[5], "created_at": r[6], "items": []}
                  for r in conn.execute("select o.order_id, o.status, o.total, o.customer_id, c.name, o.version, "
                                        "o.created_at from orders o join customers c using (customer_id) "
                                        "where o.order_id = any(%s)", (made["orders"],))}
        for oid, pid, qty, price in conn.execute("select order_id, product_id, quantity, unit_price from order_items "
                                                 "where order_id = any(%s)", (list(orders),)):
            orders[oid]["items"].append((pid, qty, f"{price:.2f}"))
        for o in orders.values():
            o["items"].sort()
        stats = {pid: (0, 0) for pid in made["products"]}
        for oid, o in orders.items():
            if o["status"] != "cancelled":
                for pid, qty, _ in o["items"]:
                    count, units = stats[pid]
                    stats[pid] = (count + 1, units + qty)
        stock = dict(conn.execute("select product_id, available from stock where product_id = any(%s)",
                                  (made["products"],)).fetchall())
        products = {r[0]: {"name": r[1], "price": r[2]} for r in conn.execute(
            "select product_id, name, price from products where product_id = any(%s)", (made["products"],))}
    live = [o for o in orders.values() if o["status"] != "cancelled"]
    cents = sum(int(Decimal(o["total"]) * 100) for o in live)
    return {"orders": orders, "stats": stats, "stock": stock, "products": products, "sales": (len(live), cents)}


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
    """Every read model equals the truth; the failure lists what differs, per read model."""
    found = count_mismatches(pipeline, truth)
    assert not found.total, f"read models differ from the write model:\n{found.describe()}"


# ---- counting mismatches ------------------------------------------------------------------------------

READ_MODELS = ("order_views", "customer_history", "product_stats", "search", "sales_ledgers", "sales_days")
EXAMPLES = 5
LEDGER_CLOCK_SKEW_S = 5.0  # the event's time (gateway clock) vs the row's created_at (database clock)


@dataclass
class Mismatches:
    """How many documents of each read model differ from the truth, with up to EXAMPLES ids (and why)
    each: a fault-injection run reports every damaged read model, not just the first difference."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, model: str, ident: str, why: str) -> None:
        self.counts[model] = self.counts.get(model, 0) + 1
        shown = self.examples.setdefault(model, [])
        if len(shown) < EXAMPLES:
            shown.append(f"{ident}: {why}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: Mismatches) -> Mismatches:
        for model, count in other.counts.items():
            self.counts[model] = self.counts.get(model, 0) + count
            self.examples.setdefault(model, []).extend(other.examples.get(model, []))
            del self.examples[model][EXAMPLES:]
        return self

    def describe(self) -> str:
        return "\n".join(f"  {model}: {count} ({'; '.join(self.examples.get(model, []))})"
                         for model, count in self.counts.items() if count)


def count_mismatches(pipeline: Pipeline, truth: dict) -> Mismatches:
    """Compare every read model of `pipeline` with `truth` and count the documents that differ."""
    snap = pipeline.snapshot()
    found = Mismatches(counts=dict.fromkeys(READ_MODELS, 0))
    orders = truth["orders"]
    _order_views(found, snap["order_views"], orders)
    _history(found, snap["history"], orders)
    stats = {d["_id"]: (d.get("purchase_count"), d.get("units_sold")) for d in snap["product_stats"]}
    for pid, want in truth["stats"].items():
        if stats.get(pid, (0, 0)) != want:
            found.add("product_stats", pid, f"(purchases, units) {stats.get(pid)} != {want}")
    _search(found, dict(snap["search"]), truth)
    ledgers = pipeline.ledgers(list(orders))
    _ledgers(found, ledgers, orders)
    _sales_days(found, snap["sales"], orders, ledgers)
    return found


def _order_views(found: Mismatches, docs: list[dict], orders: dict) -> None:
    views = {v["_id"]: v for v in docs}
    for oid in sorted(set(views) - set(orders)):
        found.add("order_views", oid, "a view of no order in the write model")
    for oid, want in orders.items():
        v = views.get(oid)
        if v is None:
            found.add("order_views", oid, "missing")
            continue
        got = (v.get("status"), v.get("total"), v.get("customer_id"), v.get("customer_name"), v.get("last_seq"))
        expected = (want["status"], want["total"], want["customer_id"], want["customer_name"], want["version"])
        items = sorted((i["product_id"], i["quantity"], i["unit_price"]) for i in v.get("items") or [])
        if got != expected:
            found.add("order_views", oid, f"(status, total, customer, name, last_seq) {got} != {expected}")
        elif items != want["items"]:
            found.add("order_views", oid, f"items {items} != {want['items']}")


def _history(found: Mismatches, docs: list[dict], orders: dict) -> None:
    entries: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for h in docs:
        entries[(h.get("customer_id"), h.get("order_id"))].append(h)
    wanted = {(want["customer_id"], oid) for oid, want in orders.items()}
    for key in sorted(set(entries) - wanted, key=str):
        found.add("customer_history", f"{key[0]}:{key[1]}", "an entry of no order of that customer")
    for oid, want in orders.items():
        got = entries.get((want["customer_id"], oid), [])
        if len(got) != 1:
            found.add("customer_history", oid, f"{len(got)} entries instead of one")
            continue
        seen = (got[0].get("status"), got[0].get("total"), got[0].get("last_seq"))
        if seen != (want["status"], want["total"], want["version"]):
            found.add("customer_history", oid, f"(status, total, last_seq) {seen} != "
                                               f"{(want['status'], want['total'], want['version'])}")


def _search(found: Mismatches, search: dict, truth: dict) -> None:
    for pid, available in truth["stock"].items():
        doc = search.get(pid)
        if doc is None:
            found.add("search", pid, "missing")
            continue
        product = truth.get("products", {}).get(pid)
        got = (doc.get("in_stock"), doc.get("purchase_count"))
        want = (available > 0, truth["stats"][pid][0])
        if product is not None:
            got += (doc.get("name"), doc.get("price"))
            want += (product["name"], float(product["price"]))
        if got != want:
            found.add("search", pid, f"(in_stock, purchase_count, name, price) {got} != {want}")


def _ledgers(found: Mismatches, ledgers: dict[str, dict], orders: dict) -> None:
    for oid, want in orders.items():
        ledger = ledgers.get(oid)
        if ledger is None or not ledger["state"]:
            found.add("sales_ledgers", oid, "missing")
            continue
        state = ledger["state"]
        got = (ledger["seq"], state.get("status"), Decimal(state.get("total", "0")),
               sorted((pid, int(q)) for pid, q in state.get("items", [])))
        expected = (want["version"], want["status"], Decimal(want["total"]),
                    sorted((pid, qty) for pid, qty, _ in want["items"]))
        if got != expected:
            found.add("sales_ledgers", oid, f"(seq, status, total, items) {got} != {expected}")
            continue
        created = _ledger_time(state)
        if created is None or abs((created - want["created_at"]).total_seconds()) > LEDGER_CLOCK_SKEW_S:
            found.add("sales_ledgers", oid, f"created_at {state.get('created_at')} != {want['created_at']}")


def _ledger_time(state: dict) -> datetime | None:
    try:
        at = datetime.fromisoformat(state["created_at"])
    except (KeyError, TypeError, ValueError):
        return None
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def _sales_days(found: Mismatches, sales: dict[str, dict], orders: dict, ledgers: dict[str, dict]) -> None:
    """Day and hour counters equal the sums over the orders that are not cancelled, each counted on the
    day and hour of its creation (the event's time the ledger recorded, else the row's)."""
    expected: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for oid, o in orders.items():
        if o["status"] == "cancelled":
            continue
        at = (_ledger_time(ledgers[oid]["state"] or {}) if oid in ledgers else None) or o["created_at"]
        at = at.astimezone(timezone.utc)
        day, hour, cents = at.strftime("%Y-%m-%d"), at.strftime("%H"), int(Decimal(o["total"]) * 100)
        for fld, amount in (("orders", 1), ("revenue_cents", cents), (f"hour:{hour}:orders", 1),
                            (f"hour:{hour}:revenue_cents", cents)):
            expected[sales_day_key(day, prefix="")][fld] += amount
    for key in sorted(set(sales) | set(expected)):
        got = {k: int(v) for k, v in sales.get(key, {}).items() if int(v)}
        want = {k: v for k, v in expected.get(key, {}).items() if v}
        if got != want:
            wrong = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
            found.add("sales_days", key, f"{', '.join(f'{k} {got.get(k, 0)} != {want.get(k, 0)}' for k in wrong[:4])}")
