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

from app.settings import Settings
from agents.projections import consumer_group
from connectors import kafka, postgres, redis
from domain.freshness import progress_key
from tests.e2e.conftest import (create_customer, create_order, create_product, deadline, make_client, wait_until)

from tests.e2e.pipeline import SETTLE_S, Pipeline, check_against_truth, place_orders, truth

FRESHNESS_MAX_LAG_S = Settings().freshness_max_lag_s


def test_replay_from_offset_zero_reproduces_identical_views(isolated, settings: Settings, token: str):
    client = make_client(isolated["gateway"].url, token)
    made = place_orders(client, random.Random(7), orders=25, made=isolated["made"])
    first = Pipeline(settings, isolated["prefix"], f"first{uuid.uuid4().hex[:6]}", 2, isolated["log_dir"])
    second = Pipeline(settings, isolated["prefix"], f"second{uuid.uuid4().hex[:6]}", 3, isolated["log_dir"])
    try:
        first.start_all("a")
        first.wait_caught_up("a")
        check_against_truth(first, truth(settings, made))
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
        place_orders(client, random.Random(11), orders=15, made=isolated["made"])
        for projection in ("order-views", "sales-stats"):
            for w in pipeline.workers[projection]:
                w.kill()
            pipeline.workers[projection] = []
        made = place_orders(client, random.Random(12), orders=15, made=isolated["made"])
        for projection in ("order-views", "sales-stats"):
            pipeline.start(projection, "c")
        pipeline.wait_caught_up("c")
        check_against_truth(pipeline, truth(settings, made))
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
        made = place_orders(client, random.Random(13), orders=20, made=isolated["made"])
        pipeline.wait_caught_up("s")
        check_against_truth(pipeline, truth(settings, made))
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
                place_orders(client, rng, orders=5, made=isolated["made"])
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
        check_against_truth(pipeline, truth(settings, isolated["made"]))
    finally:
        stop.set()
        pipeline.stop()
        pipeline.cleanup()


def unpublished(settings: Settings, aggregate_ids: list[str]) -> int:
    with postgres.connect(settings) as conn:
        return conn.execute("select count(*) from outbox where aggregate_id = any(%s) and published_at is null",
                            (aggregate_ids,)).fetchone()[0]


def test_answers_say_how_fresh_they_are_while_the_projection_is_stopped(
        isolated, settings: Settings, token: str, spawn_query_api):
    """An order placed and projected is `current`; with the order projection stopped and the order shipped,
    it is answered from the write model (shipped, version 2) and never as `current`, the history and the
    search say `lagging`; once the projection runs again, the view answers `current` with the new state."""
    client = make_client(isolated["gateway"].url, token)
    pipeline = Pipeline(settings, isolated["prefix"], f"fresh{uuid.uuid4().hex[:6]}", 7, isolated["log_dir"])
    api = spawn_query_api("freshness", MONGO_DATABASE=pipeline.settings.mongo_database,
                          ES_PRODUCTS_ALIAS=pipeline.settings.es_products_alias, REDIS_URL=pipeline.env["REDIS_URL"],
                          TOPIC_PREFIX=isolated["prefix"], PROJECTION_GROUP_SUFFIX="-f")
    q = make_client(api.base_url, token)

    def order_answer(order_id: str, freshness: str) -> dict | None:
        body = q.get(f"/api/orders/{order_id}").json()
        return body if body.get("freshness") == freshness else None

    try:
        pipeline.start("order-views", "f")
        customer = create_customer(client, name="Fresh Reader")
        product = create_product(client, price="20.00", stock=10)
        first = create_order(client, customer, [(product, 1)])["order_id"]
        seen = wait_until("first order projected", lambda: order_answer(first, "current"), SETTLE_S)
        assert (seen["status"], seen["last_seq"], seen["lag_s"]) == ("pending", 1, None)
        cached = q.get(f"/api/orders/{first}")
        assert cached.headers["X-Cache"] == "hit" and cached.json()["freshness"] == "current"
        wait_until("history current", lambda: (b := q.get(f"/api/customers/{customer}/orders").json())
                   .get("freshness") == "current" and b)
        reports = redis.redis_client(pipeline.settings)
        wait_until("every partition reported", lambda: len(reports.hgetall(
            progress_key(consumer_group("order-views", "-f")))) == settings.topic_partitions)

        for worker in pipeline.workers.pop("order-views"):
            worker.stop()
        time.sleep(FRESHNESS_MAX_LAG_S + 0.5)  # its last report is now older than the bound
        shipped = client.post(f"/api/orders/{first}/ship")
        assert shipped.status_code == 202 and shipped.json()["version"] == 2, shipped.text
        second = create_order(client, customer, [(product, 2)])["order_id"]
        for key, values in (("customers", [customer]), ("products", [product]), ("orders", [first, second])):
            isolated["made"][key].extend(values)  # the module's truth covers every aggregate on its topics
        wait_until("relay published the shipment", lambda: unpublished(settings, [first, second]) == 0)

        for _ in range(10):
            r = q.get(f"/api/orders/{first}")
            body = r.json()
            assert r.status_code == 200 and r.headers["X-Cache"] == "bypass", r.text
            assert (body["freshness"], body["status"], body["last_seq"]) == ("write-model", "shipped", 2), body
        body = q.get(f"/api/orders/{second}").json()
        assert (body["freshness"], body["status"], body["total"], body["last_seq"]) == \
            ("write-model", "pending", "40.00", 1)
        history = q.get(f"/api/customers/{customer}/orders").json()
        assert history["freshness"] == "lagging" and history["lag_s"] > FRESHNESS_MAX_LAG_S, history
        search = q.get("/api/products/search").json()  # no product-search worker runs in this pipeline
        assert (search["freshness"], search["lag_s"]) == ("lagging", None), search

        pipeline.start("order-views", "f")
        fresh = wait_until("shipment projected after the restart", lambda: order_answer(first, "current"), SETTLE_S)
        assert (fresh["status"], fresh["last_seq"]) == ("shipped", 2)
        again = wait_until("second order projected", lambda: order_answer(second, "current"), SETTLE_S)
        same = ("order_id", "customer_id", "status", "total", "last_seq")
        assert {k: again[k] for k in same} == {k: body[k] for k in same}
        history = q.get(f"/api/customers/{customer}/orders").json()
        assert history["freshness"] == "current" and {o["order_id"] for o in history["orders"]} == {first, second}
    finally:
        q.close()
        pipeline.stop()
        pipeline.cleanup()
