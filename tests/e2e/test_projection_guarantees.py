"""Projection guarantees on an isolated pipeline (own topics, read-model database, search alias and
Redis database): replay from offset 0 reproduces identical views, a worker killed mid-stream loses
and double-applies nothing, two workers of one group split the partitions, and workers joining and
leaving under live traffic lose nothing — each checked against the truth derived from the write
model."""
from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from elasticsearch.helpers import scan

from app import processes
from app.read_models import CUSTOMER_HISTORY, ORDER_VIEWS, PRODUCT_STATS, sales_day_key
from app.settings import Settings
from app.projections import PROJECTIONS
from connectors import elasticsearch, kafka, mongo, postgres, redis
from tests.e2e.conftest import (create_customer, create_order, create_product, deadline, gateway_spawner,
                                make_client, wait_until)

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
            return {
                "order_views": sorted(db[ORDER_VIEWS].find(), key=lambda d: d["_id"]),
                "history": sorted(db[CUSTOMER_HISTORY].find(), key=lambda d: d["_id"]),
                "product_stats": sorted(({k: v for k, v in d.items() if k != "version"}
                                         for d in db[PRODUCT_STATS].find()), key=lambda d: d["_id"]),
                "search": sorted((h["_id"], h["_source"]) for h in hits),
                "sales": {k: r.hgetall(k) for k in sorted(r.scan_iter("sales:day:*"))},
            }
        finally:
            client.close()

    def cleanup(self) -> None:
        client = mongo.mongo_client(self.settings)
        client.drop_database(self.settings.mongo_database)
        client.close()
        es = elasticsearch.es_client(self.settings)
        es.options(ignore_status=404).indices.delete(index=f"{self.settings.es_products_alias}-v1")
        redis.redis_client(self.settings).flushdb()


@pytest.fixture(scope="module")
def isolated(setup_done, settings: Settings, spawn_gateway_module, tmp_path_factory) -> Iterator[dict]:
    prefix = f"g{uuid.uuid4().hex[:6]}-"
    gateway = spawn_gateway_module("isolated", TOPIC_PREFIX=prefix)
    gateway.wait_ready(leader=None)
    yield {"prefix": prefix, "gateway": gateway, "log_dir": tmp_path_factory.mktemp("pipelines"),
           "made": {"customers": [], "products": [], "orders": []}}
    admin_topics = kafka.admin_client(settings).list_topics(timeout=10).topics
    kafka.delete_topics(settings, [t for t in admin_topics if t.startswith(prefix) or prefix in t])


@pytest.fixture(scope="module")
def spawn_gateway_module(setup_done, gateway_logs):
    with gateway_spawner(gateway_logs) as spawn:
        yield spawn


def _traffic(client, rng: random.Random, orders: int, made: dict) -> dict:
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


def _truth(settings: Settings, made: dict) -> dict:
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


def _check_against_truth(pipeline: Pipeline, truth: dict, timeout: float = 30.0) -> None:
    """The read models equal the truth, allowing `timeout` for copies made by periodic upkeep."""
    end = deadline(timeout)
    while True:
        try:
            return _compare(pipeline, truth)
        except AssertionError:
            if time.monotonic() > end:
                raise
            time.sleep(1.0)


def _compare(pipeline: Pipeline, truth: dict) -> None:
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
    sales = snap["sales"].get(sales_day_key(day), {})
    assert (int(sales.get("orders", 0)), int(sales.get("revenue_cents", 0))) == truth["sales"]


def test_replay_from_offset_zero_reproduces_identical_views(isolated, settings: Settings, token: str):
    client = make_client(isolated["gateway"].url, token)
    made = _traffic(client, random.Random(7), orders=25, made=isolated["made"])
    first = Pipeline(settings, isolated["prefix"], f"first{uuid.uuid4().hex[:6]}", 2, isolated["log_dir"])
    second = Pipeline(settings, isolated["prefix"], f"second{uuid.uuid4().hex[:6]}", 3, isolated["log_dir"])
    try:
        first.start_all("a")
        first.wait_caught_up("a")
        _check_against_truth(first, _truth(settings, made))
        before = first.snapshot()

        second.start_all("b")
        second.wait_caught_up("b")
        assert second.snapshot() == before, "a replay from offset 0 built different read models"

        first.stop()
        first.start_all("again")  # replay everything into the already-built models: nothing may change
        first.wait_caught_up("again")
        assert first.snapshot() == before, "replaying into existing read models changed them"
    finally:
        first.stop()
        second.stop()
        first.cleanup()
        second.cleanup()


def test_worker_killed_mid_stream_loses_and_double_applies_nothing(isolated, settings: Settings, token: str):
    client = make_client(isolated["gateway"].url, token)
    pipeline = Pipeline(settings, isolated["prefix"], f"crash{uuid.uuid4().hex[:6]}", 4, isolated["log_dir"])
    try:
        pipeline.start_all("c")
        _traffic(client, random.Random(11), orders=15, made=isolated["made"])
        for projection in ("order-views", "sales-stats"):
            for w in pipeline.workers[projection]:
                w.kill()
            pipeline.workers[projection] = []
        made = _traffic(client, random.Random(12), orders=15, made=isolated["made"])
        for projection in ("order-views", "sales-stats"):
            pipeline.start(projection, "c")
        pipeline.wait_caught_up("c")
        _check_against_truth(pipeline, _truth(settings, made))
    finally:
        pipeline.stop()
        pipeline.cleanup()


def test_two_workers_in_one_group_split_the_partitions(isolated, settings: Settings, token: str):
    client = make_client(isolated["gateway"].url, token)
    pipeline = Pipeline(settings, isolated["prefix"], f"split{uuid.uuid4().hex[:6]}", 5, isolated["log_dir"])
    try:
        pipeline.start("order-views", "s", count=2)
        pipeline.start("product-search", "s")
        pipeline.start("sales-stats", "s", count=2)
        admin = kafka.admin_client(settings)
        end = deadline(60)
        while True:
            desc = admin.describe_consumer_groups(["cqrs-order-views-s"])["cqrs-order-views-s"].result(10)
            owned = [sorted(tp.partition for tp in m.assignment.topic_partitions
                            if tp.topic == f"{isolated['prefix']}order-events") for m in desc.members]
            if len(owned) == 2 and all(owned) and sorted(sum(owned, [])) == list(range(settings.topic_partitions)):
                break
            assert time.monotonic() < end, f"partitions not split between two workers: {owned}"
            time.sleep(0.5)
        made = _traffic(client, random.Random(13), orders=20, made=isolated["made"])
        pipeline.wait_caught_up("s")
        _check_against_truth(pipeline, _truth(settings, made))
    finally:
        pipeline.stop()
        pipeline.cleanup()


def test_workers_joining_and_leaving_under_live_traffic_lose_nothing(isolated, settings: Settings, token: str):
    """Each join and each leave rebalances the group while commands keep arriving; records fetched
    around a rebalance must be processed by someone, exactly once in effect."""
    pipeline = Pipeline(settings, isolated["prefix"], f"churn{uuid.uuid4().hex[:6]}", 6, isolated["log_dir"])
    stop = threading.Event()
    failures: list[BaseException] = []

    def drive() -> None:
        client, rng = make_client(isolated["gateway"].url, token), random.Random(17)
        try:
            while not stop.wait(0.2):
                _traffic(client, rng, orders=5, made=isolated["made"])
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    traffic = threading.Thread(target=drive, daemon=True)
    try:
        pipeline.start("order-views", "m", count=2)
        pipeline.start("product-search", "m")
        pipeline.start("sales-stats", "m")
        traffic.start()
        for _ in range(3):
            time.sleep(6)
            pipeline.start("order-views", "m")
            time.sleep(6)
            pipeline.workers["order-views"].pop(0).stop()
        stop.set()
        traffic.join(timeout=60)
        assert not failures, f"commands failed: {failures[0]!r}"
        pipeline.wait_caught_up("m")
        _check_against_truth(pipeline, _truth(settings, isolated["made"]))
    finally:
        stop.set()
        pipeline.stop()
        pipeline.cleanup()


def test_query_api_falls_back_to_the_write_model_while_the_projection_is_stopped(
        isolated, settings: Settings, token: str, spawn_query_api):
    """While the order projection is stopped, a new order is served from the write model as stale;
    once it runs again, the same order is served from its view, with the same content."""
    client = make_client(isolated["gateway"].url, token)
    pipeline = Pipeline(settings, isolated["prefix"], f"stale{uuid.uuid4().hex[:6]}", 7, isolated["log_dir"])
    api = spawn_query_api("stale", MONGO_DATABASE=pipeline.settings.mongo_database,
                          ES_PRODUCTS_ALIAS=pipeline.settings.es_products_alias, REDIS_URL=pipeline.env["REDIS_URL"])
    q = httpx.Client(base_url=api.base_url, timeout=10)

    def order_answer(order_id: str, freshness: str) -> dict | None:
        body = q.get(f"/api/orders/{order_id}").json()
        return body if body.get("freshness") == freshness else None

    try:
        pipeline.start("order-views", "f")
        customer = create_customer(client, name="Stale Reader")
        product = create_product(client, price="20.00", stock=10)
        first = create_order(client, customer, [(product, 1)])["order_id"]
        wait_until("first order projected", lambda: order_answer(first, "fresh"), SETTLE_S)

        for worker in pipeline.workers.pop("order-views"):
            worker.stop()
        second = create_order(client, customer, [(product, 2)])["order_id"]
        for key, values in (("customers", [customer]), ("products", [product]), ("orders", [first, second])):
            isolated["made"][key].extend(values)  # the module's truth covers every aggregate on its topics
        stale = q.get(f"/api/orders/{second}")
        assert stale.status_code == 200 and stale.headers["X-Cache"] == "bypass"
        body = stale.json()
        assert (body["freshness"], body["status"], body["total"], body["last_seq"]) == ("stale", "pending", "40.00", 1)

        pipeline.start("order-views", "f")
        fresh = wait_until("second order projected after the restart", lambda: order_answer(second, "fresh"),
                           SETTLE_S)
        same = ("order_id", "customer_id", "customer_name", "status", "total", "last_seq")
        assert {k: fresh[k] for k in same} == {k: body[k] for k in same}
        assert [(i["product_id"], i["quantity"], i["unit_price"]) for i in fresh["items"]] == \
               [(i["product_id"], i["quantity"], i["unit_price"]) for i in body["items"]]
    finally:
        q.close()
        pipeline.stop()
        pipeline.cleanup()
