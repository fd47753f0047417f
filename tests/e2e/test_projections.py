"""Commands become read models: real gateway, relay and Faust workers, real MongoDB (FerretDB),
Elasticsearch and Redis. Each run uses fresh consumer groups starting at the end of the topics."""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from decimal import Decimal

import httpx
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from app.operations import processes
from domain.read_models import PRODUCTS_ALIAS, history_entry_id, sales_day_key
from app.settings import Settings
from agents.dead_letters import DLQ_TOPIC, describe
from agents.projections import PROJECTIONS
from connectors import elasticsearch, kafka, mongo, redis
from tests.e2e.conftest import (create_customer, create_order, create_product, deadline, make_client,
                                serving_order_collections, serving_record, wait_until)

TIMEOUT_S = 60


def _group_ready(settings: Settings, group: str) -> bool:
    admin = kafka.admin_client(settings)
    try:
        desc = admin.describe_consumer_groups([group])[group].result(5)
    except Exception:
        return False
    return desc.state.name == "STABLE" and any(m.assignment.topic_partitions for m in desc.members)


METRICS_PORTS: dict[str, int] = {}


def worker_metrics(projection: str) -> dict[str, float]:
    """The samples a worker's /metrics endpoint serves, by `name{labels}`."""
    text = httpx.get(f"http://127.0.0.1:{METRICS_PORTS[projection]}/metrics", timeout=5).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


@pytest.fixture(scope="module")
def workers(setup_done, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    suffix = f"-e2e-{uuid.uuid4().hex[:8]}"
    env = {"PROJECTION_GROUP_SUFFIX": suffix, "PROJECTION_START": "latest", "PROJECTION_BATCH_WAIT_S": "0.1",
           "GAP_HOLD_SECONDS": "5"}
    log_dir = tmp_path_factory.mktemp("workers")
    started = []
    for name in PROJECTIONS:
        METRICS_PORTS[name] = processes.free_port()
        started.append(processes.start(f"worker-{name}", ["worker", name, "--metrics-port", str(METRICS_PORTS[name])],
                                       log_dir=log_dir, env=env, ready_path=None))
    try:
        end = deadline(TIMEOUT_S)
        for name in PROJECTIONS:
            while not _group_ready(settings, f"cqrs-{name}{suffix}"):
                for w in started:
                    assert w.proc.poll() is None, f"{w.name} exited: {w.log_tail()}"
                assert time.monotonic() < end, f"worker {name} never joined its group: " \
                                               f"{next(w for w in started if name in w.name).log_tail()}"
                time.sleep(0.3)
        yield suffix
    finally:
        for w in started:
            w.stop()
        internal = [t for t in kafka.admin_client(settings).list_topics(timeout=10).topics if suffix in t]
        kafka.delete_topics(settings, internal)


@pytest.fixture(scope="module")
def read_db(settings: Settings):
    client = mongo.mongo_client(settings)
    yield mongo.read_database(settings, client)
    client.close()


def _sales_day(settings: Settings) -> dict[str, str]:
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    client = mongo.mongo_client(settings)
    try:
        prefix = serving_record(mongo.read_database(settings, client), "sales-stats").sales_prefix
    finally:
        client.close()
    return redis.redis_client(settings).hgetall(sales_day_key(day, prefix))


def test_order_lifecycle_reaches_every_read_model(workers, client, read_db, settings: Settings):
    es = elasticsearch.es_client(settings)
    before = _sales_day(settings)
    customer = create_customer(client, name="Ada Lovelace")
    headphones = create_product(client, price="79.99", stock=1, name="Wireless Headphones", category="Electronics",
                                tags=["wireless", "audio"], image_url="https://img.example/p200.png")
    cable = create_product(client, price="5.00", stock=10, name="USB Cable", category="Electronics")
    order = create_order(client, customer, [(headphones, 1), (cable, 2)])["order_id"]
    assert client.post(f"/api/orders/{order}/items", json={"product_id": cable, "quantity": 1}).status_code == 202
    assert client.post(f"/api/orders/{order}/ship", json={"tracking_number": "TRK-1"}).status_code == 202

    view = wait_until("order view at sequence 3",
                      lambda: read_db[serving_order_collections(read_db).views].find_one({"_id": order, "last_seq": 3}))
    assert view["status"] == "shipped" and view["tracking_number"] == "TRK-1"
    assert view["customer_name"] == "Ada Lovelace"
    assert view["total"] == "94.99"
    assert sorted((i["product_name"], i["quantity"], i["unit_price"]) for i in view["items"]) == [
        ("USB Cable", 3, "5.00"), ("Wireless Headphones", 1, "79.99")]

    entry_id = history_entry_id(customer, order)
    history = wait_until("customer history", lambda: (read_db[serving_order_collections(read_db).history].find_one({"_id": entry_id}) or {})
                         .get("status") == "shipped" and read_db[serving_order_collections(read_db).history].find_one({"_id": entry_id}))
    assert (history["customer_id"], history["order_id"], history["total"]) == (customer, order, "94.99")

    doc = wait_until("indexed product out of stock after the last one was reserved", lambda: (
        es.options(ignore_status=404).get(index=PRODUCTS_ALIAS, id=headphones).get("_source") or {}).get("in_stock")
        is False and es.get(index=PRODUCTS_ALIAS, id=headphones)["_source"])
    assert doc["name"] == "Wireless Headphones" and doc["price"] == 79.99 and "stock" not in doc

    stats = wait_until("product stats", lambda: read_db[serving_record(read_db, "sales-stats").product_stats].find_one({"_id": cable, "units_sold": 3}))
    assert stats["purchase_count"] == 1
    wait_until("purchase_count in the search index", lambda: es.get(
        index=PRODUCTS_ALIAS, id=headphones)["_source"].get("purchase_count") == 1)

    after = wait_until("dashboard figures", lambda: (lambda d: d if int(d.get("orders", 0)) >=
                                                     int(before.get("orders", 0)) + 1 else None)(_sales_day(settings)))
    assert int(after["revenue_cents"]) - int(before.get("revenue_cents", 0)) >= 9499

    assert client.post(f"/api/orders/{order}/deliver").status_code == 202
    wait_until("delivered", lambda: read_db[serving_order_collections(read_db).views].find_one({"_id": order, "status": "delivered"}))


def test_redelivered_events_change_nothing(workers, client, read_db, settings: Settings, wait_for_events):
    customer = create_customer(client)
    product = create_product(client, price="12.50", stock=50)
    order = create_order(client, customer, [(product, 2)])["order_id"]
    assert client.post(f"/api/orders/{order}/items", json={"product_id": product, "quantity": 1}).status_code == 202
    wait_until("order view", lambda: read_db[serving_order_collections(read_db).views].find_one({"_id": order, "last_seq": 2}))
    wait_until("stats", lambda: read_db[serving_record(read_db, "sales-stats").product_stats].find_one({"_id": product, "units_sold": 3}))

    events = wait_for_events("order-events", order, 2)
    producer = Producer({**kafka.base_config(settings), "partitioner": "murmur2_random"})
    for _ in range(3):
        for e in events:
            producer.produce("order-events", key=e.key, value=e.value, headers=list(e.headers.items()))
    assert producer.flush(10) == 0
    marker = create_order(client, customer, [(product, 1)])["order_id"]
    wait_until("a later order", lambda: read_db[serving_order_collections(read_db).views].find_one({"_id": marker}))

    def skipped(projection: str) -> float:
        samples = worker_metrics(projection)
        return sum(samples.get(f'projection_events_total{{outcome="{o}",projection="{projection}"}}', 0)
                   for o in ("duplicate", "stale"))

    for projection in ("order-views", "sales-stats"):  # the six copies are counted, not applied
        wait_until(f"{projection} skipping the copies", lambda: skipped(projection) >= 6)
    stats = wait_until("stats with the later order and nothing more", lambda: (lambda d: d if d and (
        d["purchase_count"], d["units_sold"]) == (2, 4) else None)(read_db[serving_record(read_db, "sales-stats").product_stats].find_one({"_id": product})))
    assert (stats["purchase_count"], stats["units_sold"]) == (2, 4)
    view = read_db[serving_order_collections(read_db).views].find_one({"_id": order})
    assert view["last_seq"] == 2 and view["items"][0]["quantity"] == 3 and view["total"] == "37.50"

    for projection in ("order-views", "sales-stats"):
        samples = worker_metrics(projection)
        assert samples[f'projection_events_total{{outcome="applied",projection="{projection}"}}'] >= 3
        assert samples[f'projection_worker_ready{{projection="{projection}"}}'] == 1
        assert samples[f'projection_lag_seconds{{projection="{projection}"}}'] >= 0
        assert any(k.startswith("projection_consumer_offset_lag{") for k in samples)
        assert samples[f'projection_batch_size_count{{projection="{projection}"}}'] >= 1


def test_cancelling_takes_the_order_out_of_the_figures(workers, client, read_db, settings: Settings):
    customer = create_customer(client)
    product = create_product(client, price="20.00", stock=10)
    order = create_order(client, customer, [(product, 2)])["order_id"]
    wait_until("stats", lambda: read_db[serving_record(read_db, "sales-stats").product_stats].find_one({"_id": product, "units_sold": 2}))
    assert client.post(f"/api/orders/{order}/cancel", json={"reason": "changed mind"}).status_code == 202
    stats = wait_until("stats back to zero", lambda: read_db[serving_record(read_db, "sales-stats").product_stats].find_one({"_id": product,
                                                                                        "units_sold": 0}))
    assert stats["purchase_count"] == 0
    wait_until("cancelled view", lambda: read_db[serving_order_collections(read_db).views].find_one({"_id": order, "status": "cancelled"}))


def _dead_letters_since(settings: Settings, offsets: dict[int, int]) -> list:
    consumer = Consumer({**kafka.base_config(settings), "group.id": f"dlq-read-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    meta = consumer.list_topics(DLQ_TOPIC, timeout=10).topics[DLQ_TOPIC]
    consumer.assign([TopicPartition(DLQ_TOPIC, p, offsets.get(p, 0)) for p in meta.partitions])
    found = []
    try:
        for msg in consumer.consume(10_000, timeout=2):
            if not msg.error():
                found.append(msg)
    finally:
        consumer.close()
    return found


def _dlq_ends(settings: Settings) -> dict[int, int]:
    kafka.ensure_topics(settings, [kafka.TopicSpec(DLQ_TOPIC, 3)])
    consumer = Consumer({**kafka.base_config(settings), "group.id": f"dlq-ends-{uuid.uuid4()}"})
    try:
        meta = consumer.list_topics(DLQ_TOPIC, timeout=10).topics[DLQ_TOPIC]
        return {p: consumer.get_watermark_offsets(TopicPartition(DLQ_TOPIC, p), timeout=10)[1]
                for p in meta.partitions}
    finally:
        consumer.close()


def test_poison_event_is_dead_lettered_and_later_events_still_apply(workers, client, read_db, settings: Settings):
    start = _dlq_ends(settings)
    poison_key = f"poison-{uuid.uuid4()}".encode()
    producer = Producer({**kafka.base_config(settings), "partitioner": "murmur2_random"})
    producer.produce("order-events", key=poison_key, value=b"\x00\x00\x00\x00\x63not avro at all",
                     headers=[("event_type", b"OrderCreated")])
    assert producer.flush(10) == 0
    customer = create_customer(client)
    product = create_product(client, price="15.00", stock=5)
    order = create_order(client, customer, [(product, 1)])["order_id"]
    wait_until("order after the poison event", lambda: read_db[serving_order_collections(read_db).views].find_one({"_id": order}))

    letters = wait_until("dead letters", lambda: [m for m in _dead_letters_since(settings, start)
                                                  if m.key() == poison_key] or None)
    projections = {describe(m.headers())["projection"] for m in letters}
    assert projections == {"order-views", "sales-stats"}
    meta = describe(letters[0].headers())
    assert meta["reason"] == "decode_error" and meta["source_topic"] == "order-events"
    assert letters[0].value() == b"\x00\x00\x00\x00\x63not avro at all"
    assert dict(letters[0].headers())["event_type"] == b"OrderCreated"


def test_gap_is_held_until_the_missing_event_arrives(workers, read_db, settings: Settings, codecs):
    order = f"gap-{uuid.uuid4()}"
    now = datetime.now(timezone.utc)

    def envelope(seq: int, kind: str, payload: dict) -> bytes:
        return codecs["order-events"].encode({
            "event_id": str(uuid.uuid4()), "event_type": kind, "aggregate_id": order, "sequence_number": seq,
            "occurred_at": now, "correlation_id": None, "causation_id": None,
            "payload": (f"cqrs.events.order.{kind}", payload)})

    created = envelope(1, "OrderCreated", {"customer_id": "nobody", "items": [
        {"product_id": "ghost", "quantity": 1, "unit_price": Decimal("11.00")}], "total": Decimal("11.00"),
        "status": "pending"})
    shipped = envelope(2, "OrderShipped", {"tracking_number": None})
    delivered = envelope(3, "OrderDelivered", {})
    producer = Producer({**kafka.base_config(settings), "partitioner": "murmur2_random"})
    for value in (created, delivered):
        producer.produce("order-events", key=order.encode(), value=value)
    assert producer.flush(10) == 0
    wait_until("created", lambda: read_db[serving_order_collections(read_db).views].find_one({"_id": order}))
    time.sleep(1.0)
    held = read_db[serving_order_collections(read_db).views].find_one({"_id": order})
    assert (held["last_seq"], held["status"]) == (1, "pending"), "sequence 3 applied before 2"
    producer.produce("order-events", key=order.encode(), value=shipped)
    assert producer.flush(10) == 0
    final = wait_until("gap filled", lambda: read_db[serving_order_collections(read_db).views].find_one({"_id": order, "last_seq": 3}))
    assert final["status"] == "delivered"


def test_dead_letters_are_listed_and_replayed_through_the_cli(workers, settings: Settings):
    import subprocess
    import sys

    start = _dlq_ends(settings)
    key = f"poison-cli-{uuid.uuid4()}"
    producer = Producer({**kafka.base_config(settings), "partitioner": "murmur2_random"})
    producer.produce("product-events", key=key.encode(), value=b"garbage")
    assert producer.flush(10) == 0
    wait_until("dead letter", lambda: [m for m in _dead_letters_since(settings, start) if m.key() == key.encode()]
               or None)

    def cqrs(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "app.cli", "dlq", *args], capture_output=True, text=True,
                              timeout=120)

    listed = cqrs("list", "--projection", "product-search", "--key", key)
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if key[:40] in ln)
    assert "product-search" in line and "decode_error" in line and "product-events[" in line

    first = cqrs("replay", "--projection", "product-search", "--key", key)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split()[0] == "replayed" and int(first.stdout.split()[1]) >= 1, first.stdout
    back = wait_until("replayed poison dead-lettered again", lambda: [
        m for m in _dead_letters_since(settings, start) if m.key() == key.encode()
        and dict(m.headers()).get("dlq.replayed_from")] or None)
    assert describe(back[0].headers())["reason"] == "decode_error"


def test_commands_become_visible_through_the_query_api(workers, client, spawn_query_api, settings: Settings,
                                                      token: str):
    """The seed's story end to end: add a product, search it, order it, read the order, the history
    and the dashboard through the query API."""

    api = spawn_query_api("flow", PROJECTION_GROUP_SUFFIX=workers)
    unique = uuid.uuid4().hex[:8]
    customer = create_customer(client, name="John Doe")
    product = create_product(client, price="79.99", stock=20, name=f"Wireless Headphones {unique}",
                             category="Electronics", tags=["wireless", "bluetooth", "audio"],
                             description="Noise-cancelling Bluetooth headphones with 20-hour battery")
    with make_client(api.base_url, token) as q:
        found = wait_until("product in search", lambda: [
            r for r in q.get("/api/products/search", params={"q": f"wireless headphones {unique}",
                                                               "category": "Electronics",
                                                               "max_price": 100}).json()["results"]
            if r["product_id"] == product])
        assert found[0]["price"] == 79.99 and found[0]["in_stock"] is True

        order = create_order(client, customer, [(product, 1)])["order_id"]
        view = wait_until("current order view", lambda: (lambda r: r if r.get("freshness") == "current" else None)(
            q.get(f"/api/orders/{order}").json()))
        assert view["customer_name"] == "John Doe" and view["total"] == "79.99" and view["status"] == "pending"
        assert view["items"][0]["product_name"] == f"Wireless Headphones {unique}"

        history = wait_until("history", lambda: q.get(f"/api/customers/{customer}/orders").json()["orders"])
        assert [o["order_id"] for o in history] == [order]

        assert client.post(f"/api/orders/{order}/ship").status_code == 202
        wait_until("shipped through the API (cache invalidated)",
                   lambda: q.get(f"/api/orders/{order}").json()["status"] == "shipped")
        dashboard = q.get("/api/dashboard/sales").json()
        assert dashboard["orders"] >= 1 and len(dashboard["hours"]) == 24

