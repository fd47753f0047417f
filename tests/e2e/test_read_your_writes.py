"""Read-your-writes under load: a command, then a read with the token its answer carried, shows the new state
every time, while other clients send 50 commands/s."""
from __future__ import annotations

import threading
import time
import uuid

import httpx

from app.settings import Settings
from tests.e2e.conftest import create_customer, create_order, create_product, make_client, wait_until
from tests.e2e.pipeline import SETTLE_S, Pipeline

TRIES = 200
BACKGROUND_PER_S = 50


class BackgroundOrders(threading.Thread):
    """Other clients' orders at a steady rate, so the reads compete with a busy projection."""

    def __init__(self, client: httpx.Client, customers: list[str], product: str, per_s: float) -> None:
        super().__init__(daemon=True)
        self.client, self.customers, self.product, self.interval = client, customers, product, 1 / per_s
        self.stop_flag = threading.Event()
        self.sent = 0
        self.failures: list[str] = []

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stop_flag.is_set():
            r = self.client.post("/api/orders", json={"customer_id": self.customers[self.sent % len(self.customers)],
                                                      "items": [{"product_id": self.product, "quantity": 1}]})
            if r.status_code != 201:
                self.failures.append(f"{r.status_code} {r.text[:200]}")
            self.sent += 1
            next_at += self.interval
            self.stop_flag.wait(max(0.0, next_at - time.monotonic()))


def test_a_read_with_the_command_token_shows_the_new_state_every_time(isolated, settings: Settings, token: str,
                                                                      spawn_query_api):
    pipeline = Pipeline(settings, isolated["prefix"], f"ryw{uuid.uuid4().hex[:6]}", 6, isolated["log_dir"])
    api = spawn_query_api("ryw", MONGO_DATABASE=pipeline.settings.mongo_database,
                          ES_PRODUCTS_ALIAS=pipeline.settings.es_products_alias, REDIS_URL=pipeline.env["REDIS_URL"],
                          TOPIC_PREFIX=isolated["prefix"], PROJECTION_GROUP_SUFFIX="-ryw")
    client = make_client(isolated["gateway"].url, token)
    q = make_client(api.base_url, token)
    product = create_product(client, price="10.00", stock=1_000_000)
    others = [create_customer(client) for _ in range(5)]
    background = [BackgroundOrders(make_client(isolated["gateway"].url, token), others, product, BACKGROUND_PER_S / 2)
                  for _ in range(2)]
    try:
        pipeline.start("order-views", "ryw")
        customer = create_customer(client, name="Own Writes")
        probe = create_order(client, customer, [(product, 1)])["order_id"]
        wait_until("projection running", lambda: q.get(f"/api/orders/{probe}").json().get("freshness") == "current",
                   SETTLE_S)
        for sender in background:
            sender.start()
        sources: dict[str, int] = {}
        started = time.monotonic()
        for i in range(TRIES):
            if i % 2 == 0:
                placed = client.post("/api/orders", json={"customer_id": customer,
                                                          "items": [{"product_id": product, "quantity": 1}]})
                assert placed.status_code == 201, placed.text
                order, want = placed.json()["order_id"], ("pending", 1)
            else:
                placed = client.post(f"/api/orders/{order}/ship")
                assert placed.status_code == 202, placed.text
                want = ("shipped", 2)
            read = q.get(f"/api/orders/{order}", headers={"Consistency-Token": placed.headers["Consistency-Token"]})
            body = read.json()
            assert read.status_code == 200 and (body["status"], body["last_seq"]) == want, (i, body)
            sources[body["freshness"]] = sources.get(body["freshness"], 0) + 1
            if i % 50 == 1:  # the customer's history, with the same token, lists the order in its new state
                history = q.get(f"/api/customers/{customer}/orders", params={"size": 100, "wait_ms": 2000},
                                headers={"Consistency-Token": placed.headers["Consistency-Token"]}).json()
                entry = next(o for o in history["orders"] if o["order_id"] == order)
                assert entry["status"] == "shipped" and history["freshness"] in ("current", "lagging"), history
        elapsed = time.monotonic() - started
        for sender in background:
            sender.stop_flag.set()
            sender.join(10)
            assert not sender.failures, sender.failures[:3]
        sent = sum(sender.sent for sender in background)
        assert sent >= BACKGROUND_PER_S * elapsed * 0.8, f"background traffic {sent / elapsed:.0f} commands/s"
        assert sources.get("current", 0) + sources.get("lagging", 0) > TRIES // 2, sources  # mostly the view
    finally:
        for sender in background:
            sender.stop_flag.set()
        q.close()
        pipeline.stop()
        pipeline.cleanup()
