"""Workers under faults, on an isolated pipeline: a crash between the writes of one batch is completed
when the batch is read again, and a store outage is waited out by a worker that stays up, reports
not-ready, keeps its partitions and resumes once the store is back — sales-stats counting on while
Elasticsearch is away. Stores are stopped and started with the stack's own command."""
from __future__ import annotations

import random
import subprocess
import time
import uuid

import httpx
import pytest

from app.operations import processes
from agents.projections import PROJECTIONS
from app.settings import Settings
from connectors import mongo, redis
from tests.conftest import ROOT, stack_command as stack
from tests.e2e.conftest import create_customer, create_order, create_product, free_port, make_client, wait_until
from tests.e2e.pipeline import Pipeline, check_against_truth, place_orders, truth

STORE_BACK_S = 120


def start_worker(pipeline: Pipeline, projection: str, group: str, **env: str) -> tuple[processes.AppProcess, str]:
    """One worker of `projection` in consumer group `group`, serving its probes; returns it and their URL."""
    port = free_port()
    worker = processes.start(f"{pipeline.name}-{group}-{projection}-{uuid.uuid4().hex[:4]}",
                             ["worker", projection, "--metrics-port", str(port)], log_dir=pipeline.log_dir,
                             env={**pipeline.env, "PROJECTION_GROUP_SUFFIX": f"-{group}", **env}, ready_path=None)
    pipeline.workers.setdefault(projection, []).append(worker)
    return worker, f"http://127.0.0.1:{port}"


def readiness(url: str) -> dict | None:
    try:
        r = httpx.get(f"{url}/readyz", timeout=2)
    except httpx.HTTPError:
        return None
    return {"status": r.status_code, **r.json()}


def test_a_crash_between_the_writes_of_one_batch_is_completed_on_restart(isolated, settings: Settings, token: str):
    """order-views writes the view, then the history entry; sales-stats the Redis ledger, then the copies.
    A worker killed between the two (a failpoint, at that exact instruction) left the second undone; the
    next worker must complete it although the first write already carries the event's sequence."""
    client = make_client(isolated["gateway"].url, token)
    pipeline = Pipeline(settings, isolated["prefix"], f"halfway{uuid.uuid4().hex[:6]}", 8, isolated["log_dir"])
    db = mongo.read_database(pipeline.settings, mongo.mongo_client(pipeline.settings))
    try:
        for projection in ("order-views", "sales-stats", "product-search"):
            start_worker(pipeline, projection, "h")
        customer = create_customer(client, name="Halfway Customer")
        product = create_product(client, price="15.00", stock=50, name="Halfway product", category="Test")
        order = create_order(client, customer, [(product, 2)])["order_id"]
        wait_until("order projected", lambda: db["order_views"].find_one({"_id": order}), 120)
        for projection in ("order-views", "sales-stats"):
            for worker in pipeline.workers.pop(projection):
                worker.stop()

        assert client.post(f"/api/orders/{order}/ship", json={}).status_code == 202
        assert client.post(f"/api/orders/{order}/deliver").status_code == 202
        crashing = [start_worker(pipeline, projection, "h", CQRS_FAILPOINTS=f"{projection}.between-writes:1")[0]
                    for projection in ("order-views", "sales-stats")]
        for worker in crashing:
            wait_until(f"{worker.name} killed at its failpoint", lambda w=worker: w.proc.poll() is not None, 120)
            assert worker.proc.returncode == -9, worker.log_tail()
        for projection in ("order-views", "sales-stats"):
            pipeline.workers[projection] = []
        history_id = f"{customer}:{order}"
        assert db["order_views"].find_one({"_id": order})["status"] == "delivered"
        assert db["customer_order_history"].find_one({"_id": history_id})["status"] == "pending", \
            "the failpoint did not stop the worker between its two writes"

        for projection in ("order-views", "sales-stats"):
            start_worker(pipeline, projection, "h")
        for key, values in (("customers", [customer]), ("products", [product]), ("orders", [order])):
            isolated["made"][key].extend(values)
        pipeline.wait_caught_up("h")
        assert db["customer_order_history"].find_one({"_id": history_id})["status"] == "delivered"
        check_against_truth(pipeline, truth(settings, isolated["made"]))
    finally:
        db.client.close()
        pipeline.stop()
        pipeline.cleanup()


# store -> the projections that must wait for it (the others keep going)
WAITING = {"redis": {"order-views", "sales-stats"}, "ferretdb": {"order-views"},
           "elasticsearch": {"product-search"}}
STORE_NAME = {"redis": "redis", "ferretdb": "mongodb", "elasticsearch": "elasticsearch"}


@pytest.mark.parametrize("service", ["redis", "ferretdb", "elasticsearch"])
def test_a_store_outage_is_waited_out_without_exiting(isolated, settings: Settings, token: str, service: str):
    client = make_client(isolated["gateway"].url, token)
    pipeline = Pipeline(settings, isolated["prefix"], f"outage{uuid.uuid4().hex[:6]}", 9, isolated["log_dir"])
    group = f"o{service[:3]}"
    rng = random.Random(service)
    probes = {}
    try:
        for projection in PROJECTIONS:
            probes[projection] = start_worker(pipeline, projection, group)[1]
        place_orders(client, rng, orders=6, made=isolated["made"])
        pipeline.wait_caught_up(group)
        sales = redis.redis_client(pipeline.settings)
        day_key = next(iter(sales.scan_iter("sales:day:????-??-??")))
        orders_before = int(sales.hget(day_key, "orders") or 0)

        stack("down", service)
        try:
            made = place_orders(client, rng, orders=6, made=isolated["made"])
            waiting = WAITING[service]
            for projection in waiting:
                wait_until(f"{projection} reports waiting for {service}",
                           lambda p=projection: (r := readiness(probes[p])) and r["status"] == 503
                           and STORE_NAME[service] in r["waiting_for"] and r, 60)
            if service == "elasticsearch":  # sales-stats counts on in Redis while the search index is away
                wait_until("sales counted during the search outage",
                           lambda: int(sales.hget(day_key, "orders") or 0) > orders_before, 60)
            for projection in set(PROJECTIONS) - waiting:
                assert readiness(probes[projection])["status"] == 200, projection
            time.sleep(3)
        finally:
            stack("up", service)
        back = time.monotonic()
        pipeline.wait_caught_up(group, timeout=STORE_BACK_S)
        caught_up_s = time.monotonic() - back
        for projection in PROJECTIONS:
            wait_until(f"{projection} ready again", lambda p=projection: readiness(probes[p])["status"] == 200, 30)
        for projection, workers in pipeline.workers.items():
            for worker in workers:
                assert worker.proc.poll() is None, f"{worker.name} exited during the outage:\n{worker.log_tail()}"
        check_against_truth(pipeline, truth(settings, made))
        assert caught_up_s < 30, f"caught up {caught_up_s:.1f}s after {service} returned"
    finally:
        pipeline.stop()
        pipeline.cleanup()
