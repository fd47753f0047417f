"""The query side end to end: HTTP requests to a real `cqrs query-api` process reading real stores.

The read models are seeded directly, following domain/read_models.py, into stores private to this
module (a fresh MongoDB database, a fresh Elasticsearch index behind its own alias, unique Redis
keys), so projections running against the same stack neither disturb nor are disturbed. The stale
fallback reads orders created through a real command gateway."""
from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from agents.projections import consumer_group
from app.queries.cache import QueryCache, invalidate_order
from domain.freshness import PartitionReport, progress_field, progress_key
from domain.partitioning import partition_for
from domain.read_models import (
    CUSTOMER_HISTORY,
    ORDER_VIEWS,
    PRODUCTS_MAPPING,
    customer_history_cache_key,
    history_entry_id,
    order_cache_key,
    sales_day_key,
)
from app.settings import Settings
from connectors.elasticsearch import es_client
from connectors.mongo import mongo_client
from connectors.redis import async_redis_client, redis_client
from tests.e2e.conftest import (
    Gateway,
    create_customer,
    create_order,
    create_product,
    free_port,
    make_client,
    refused,
    wait_until,
)

UTC = timezone.utc
UID = uuid.uuid4().hex[:10]
MONGO_DB = f"e2e_queries_{UID}"
ALIAS = f"products-e2e-{UID}"
INDEX = f"{ALIAS}-v1"
TOPIC_PREFIX = f"q{UID}-"  # the freshness tests publish heads and progress there; nothing else does


def at(day: int, hour: int = 10, micro: int = 0) -> datetime:
    return datetime(2024, 5, day, hour, 0, 0, micro, tzinfo=UTC)


def iso_ms(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# ---- seeded read models ---------------------------------------------------------------------------

def product(pid: str, name: str, category: str, price: float, *, tags: list[str], description: str, rating: float,
            purchases: int, day: int, stock: int = 10) -> dict[str, Any]:
    return {"product_id": pid, "name": name, "category": category, "subcategory": None, "description": description,
            "tags": tags, "price": price, "price_text": f"{price:.2f}", "image_url": f"https://img.example/{pid}.jpg",
            "in_stock": stock > 0, "rating": rating, "review_count": purchases // 10,
            "purchase_count": purchases, "created_at": iso_ms(at(day)), "updated_at": iso_ms(at(day)),
            "last_seq": 1}


PRODUCTS = [
    product("p01", "Wireless Headphones", "Electronics", 79.99, tags=["audio", "bluetooth"],
            description="Comfortable headphones with 30 hours of battery.", rating=4.5, purchases=120, day=1),
    product("p02", "Premium Wireless Headphones", "Electronics", 249.99, tags=["audio", "bluetooth"],
            description="Studio sound, active noise cancelling.", rating=4.6, purchases=30, day=2),
    product("p03", "Wireless Mouse", "Electronics", 24.99, tags=["computer"],
            description="Ergonomic mouse with a silent click.", rating=4.1, purchases=300, day=3),
    product("p04", "Noise Cancelling Headphones", "Electronics", 89.99, tags=["audio", "wireless"],
            description="Over-ear, foldable.", rating=4.7, purchases=80, day=4),
    product("p05", "Headphone Stand", "Accessories", 19.99, tags=["desk"],
            description="Holds your headphones.", rating=3.8, purchases=15, day=5),
    product("p06", "Wired Earbuds", "Electronics", 9.99, tags=["audio"],
            description="Budget earbuds.", rating=3.2, purchases=60, day=6, stock=0),
    product("p07", "Wireless Charger", "Electronics", 29.99, tags=["phone"],
            description="Fast charging pad.", rating=4.0, purchases=90, day=7),
    product("p08", "Python Cookbook", "Books", 39.5, tags=["programming"],
            description="Recipes for everyday Python.", rating=4.8, purchases=40, day=8),
    product("p09", "Science Fiction Anthology", "Books", 15.0, tags=["fiction"],
            description="Twenty classic stories.", rating=3.9, purchases=25, day=9, stock=0),
    product("p10", "Bluetooth Speaker", "Electronics", 59.99, tags=["audio", "wireless"],
            description="Waterproof portable speaker.", rating=4.3, purchases=200, day=10),
]


def order_view(order_id: str, customer_id: str) -> dict[str, Any]:
    return {"_id": order_id, "order_id": order_id, "customer_id": customer_id, "customer_name": "Ada Lovelace",
            "customer_email": "ada@example.com",
            "items": [{"product_id": "p01", "product_name": "Wireless Headphones",
                       "product_image": "https://img.example/p01.jpg", "quantity": 2, "unit_price": "79.99"},
                      {"product_id": "p08", "product_name": "Python Cookbook", "product_image": None,
                       "quantity": 1, "unit_price": "39.50"}],
            "total": "199.48", "status": "shipped", "tracking_number": "TRK-1", "created_at": at(1, 9, 123456),
            "updated_at": at(2, 15), "last_seq": 3}


def history_entry(order_id: str, date: datetime, total: str = "10.00") -> dict[str, Any]:
    return {"order_id": order_id, "date": date, "total": total, "status": "pending", "last_seq": 1,
            "products": [{"product_id": "p07", "name": "Wireless Charger", "price": "29.99",
                          "image_url": "https://img.example/p07.jpg", "quantity": 1}]}


@pytest.fixture(scope="module")
def mongo_db(stack: Settings) -> Iterator:
    client = mongo_client(stack)
    try:
        yield client[MONGO_DB]
    finally:
        client.drop_database(MONGO_DB)
        client.close()


@pytest.fixture(scope="module")
def product_index(stack: Settings) -> Iterator[str]:
    es = es_client(stack)
    es.indices.create(index=INDEX, mappings=PRODUCTS_MAPPING, settings={"number_of_shards": 1,
                                                                         "number_of_replicas": 0},
                      aliases={ALIAS: {}})
    try:
        operations: list[dict] = []
        for doc in PRODUCTS:
            operations += [{"index": {"_index": INDEX, "_id": doc["product_id"]}}, doc]
        result = es.bulk(operations=operations, refresh=True)
        assert not result["errors"], result
        yield ALIAS
    finally:
        es.indices.delete(index=INDEX, ignore_unavailable=True)
        es.close()


@pytest.fixture(scope="module")
def redis(stack: Settings) -> Iterator:
    client = redis_client(stack)
    yield client
    client.close()


@pytest.fixture(scope="module")
def commands(setup_done: None, gateway_logs, token: str) -> Iterator[httpx.Client]:
    """A command gateway without the outbox relay: these tests need write-model rows, not events, so
    they do not compete with other gateways for the relay lock."""
    gw = Gateway("queries", gateway_logs, env={"OUTBOX_RELAY_ENABLED": "false"}).start()
    try:
        gw.wait_ready(leader=False)
        with make_client(gw.url, token) as c:
            yield c
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def query_api(spawn_query_api, mongo_db, product_index: str):
    return spawn_query_api("main", MONGO_DATABASE=MONGO_DB, ES_PRODUCTS_ALIAS=product_index, TOPIC_PREFIX=TOPIC_PREFIX)


@pytest.fixture(scope="module")
def api(query_api, token: str) -> Iterator[httpx.Client]:
    with make_client(query_api.base_url, token) as c:
        yield c


def ok(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


def cache_count(api: httpx.Client, query: str, result: str) -> float:
    text = api.get("/metrics").text
    m = re.search(rf'^query_cache_total\{{query="{query}",result="{result}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


# ---- service endpoints ----------------------------------------------------------------------------

def test_health_readiness_and_openapi(api: httpx.Client) -> None:
    assert ok(api.get("/healthz")) == {"status": "ok"}
    ready = ok(api.get("/readyz"))
    assert ready["status"] == "ready"
    assert ready["checks"] == {"mongodb": "ok", "elasticsearch": "ok", "redis": "ok", "postgresql": "ok"}
    spec = ok(api.get("/openapi.json"))
    assert set(spec["paths"]) == {"/api/orders/{order_id}", "/api/customers/{customer_id}/orders",
                                  "/api/products/search", "/api/dashboard/sales"}
    search = spec["paths"]["/api/products/search"]["get"]
    assert {p["name"] for p in search["parameters"]} == {"q", "category", "min_price", "max_price", "in_stock",
                                                         "sort", "page", "size"}
    assert {"OrderView", "CustomerOrders", "SearchResults", "SalesDay"} <= set(spec["components"]["schemas"])
    ok(api.get("/api/dashboard/sales"))
    metrics = api.get("/metrics").text
    assert re.search(r'^query_duration_seconds_count\{outcome="200",query="SalesDashboard"\} [1-9]', metrics, re.M)


# ---- orders ---------------------------------------------------------------------------------------

def test_order_view_is_served_as_current(api: httpx.Client, mongo_db, redis) -> None:
    order_id, customer_id = uid("o"), uid("c")
    mongo_db[ORDER_VIEWS].insert_one(order_view(order_id, customer_id))
    try:
        r = api.get(f"/api/orders/{order_id}")
        body = ok(r)
        assert r.headers["X-Cache"] == "miss"
        assert body == {
            "order_id": order_id, "customer_id": customer_id, "customer_name": "Ada Lovelace",
            "customer_email": "ada@example.com",
            "items": [{"product_id": "p01", "product_name": "Wireless Headphones",
                       "product_image": "https://img.example/p01.jpg", "quantity": 2, "unit_price": "79.99"},
                      {"product_id": "p08", "product_name": "Python Cookbook", "product_image": None,
                       "quantity": 1, "unit_price": "39.50"}],
            "total": "199.48", "status": "shipped", "tracking_number": "TRK-1",
            "created_at": "2024-05-01T09:00:00.123Z", "updated_at": "2024-05-02T15:00:00.000Z", "last_seq": 3,
            "freshness": "current", "lag_s": None}
    finally:
        invalidate_order(redis, order_id, customer_id)


def test_order_missing_from_views_is_read_from_the_write_model(api: httpx.Client, commands: httpx.Client,
                                                                    mongo_db, redis, db) -> None:
    customer_id = create_customer(commands, name="Stale Reader")
    product_id = create_product(commands, price="12.50", name=f"Stale widget {UID}")
    order = create_order(commands, customer_id, [(product_id, 3)])
    order_id = order["order_id"]

    r = api.get(f"/api/orders/{order_id}")
    stale = ok(r)
    assert r.headers["X-Cache"] == "bypass"
    name, email = db.execute("select name, email from customers where customer_id = %s", (customer_id,)).fetchone()
    created = db.execute("select created_at from orders where order_id = %s", (order_id,)).fetchone()[0]
    assert stale == {"order_id": order_id, "customer_id": customer_id, "customer_name": name, "customer_email": email,
                     "items": [{"product_id": product_id, "product_name": f"Stale widget {UID}", "product_image": None,
                                "quantity": 3, "unit_price": "12.50"}],
                     "total": "37.50", "status": "pending", "tracking_number": None, "created_at": iso_ms(created),
                     "updated_at": stale["updated_at"], "last_seq": 1, "freshness": "write-model", "lag_s": None}
    assert stale["updated_at"].endswith("Z")
    # the same field names as a fresh view, and a stale answer is never cached
    other = uid("o")
    mongo_db[ORDER_VIEWS].insert_one(order_view(other, customer_id))
    fresh = ok(api.get(f"/api/orders/{other}"))
    mongo_db[ORDER_VIEWS].delete_one({"_id": other})
    invalidate_order(redis, other)
    assert set(fresh) == set(stale)
    assert redis.exists(order_cache_key(order_id)) == 0
    r = api.get(f"/api/orders/{order_id}")
    assert ok(r)["freshness"] == "write-model" and r.headers["X-Cache"] == "bypass"

    # once the projection has written the view, it is served from there
    mongo_db[ORDER_VIEWS].insert_one({**order_view(order_id, customer_id), "status": "pending"})
    try:
        assert ok(api.get(f"/api/orders/{order_id}"))["freshness"] == "current"
    finally:
        mongo_db[ORDER_VIEWS].delete_one({"_id": order_id})
        invalidate_order(redis, order_id, customer_id)


# ---- freshness: the relay's published heads against the workers' progress reports ------------------

def publish_head(db, partition: int, head: int) -> None:
    db.execute("insert into stream_heads (topic, partition, next_offset) values (%s, %s, %s) on conflict "
               "(topic, partition) do update set next_offset = excluded.next_offset",
               (TOPIC_PREFIX + "order-events", partition, head))


def report_progress(redis, partition: int, applied: int, head: int, at: float, last_event_at: float | None) -> None:
    redis.hset(progress_key(consumer_group("order-views")), progress_field(TOPIC_PREFIX + "order-events", partition),
               PartitionReport(applied, head, at, last_event_at).dumps())


def test_order_view_lagging_beyond_the_bound_is_read_from_the_write_model(api: httpx.Client, commands: httpx.Client,
                                                                         mongo_db, redis, db) -> None:
    """The view of an order says `shipped` (seeded), its write model says `pending`: which one answers, and
    what it says of itself, follows the order's partition only, cached answers included."""
    customer_id = create_customer(commands, name="Lag Reader")
    order_id = create_order(commands, customer_id, [(create_product(commands, price="12.00"), 1)])["order_id"]
    partition = partition_for(order_id, Settings().topic_partitions)
    mongo_db[ORDER_VIEWS].insert_one(order_view(order_id, customer_id))
    mongo_db[CUSTOMER_HISTORY].insert_one({"_id": history_entry_id(customer_id, order_id), "customer_id": customer_id,
                                           **history_entry(order_id, at(3))})
    try:
        publish_head(db, partition, 100)
        report_progress(redis, partition, 100, 100, time.time(), None)
        body = wait_until("view current", lambda: (b := ok(api.get(f"/api/orders/{order_id}")))["freshness"] ==
                          "current" and b)
        assert (body["status"], body["last_seq"], body["lag_s"]) == ("shipped", 3, None)
        assert api.get(f"/api/orders/{order_id}").headers["X-Cache"] == "hit"

        report_progress(redis, partition, 90, 100, time.time(), time.time() - 1.0)   # behind, by about a second
        r = api.get(f"/api/orders/{order_id}")
        body = ok(r)
        assert (body["freshness"], body["status"], r.headers["X-Cache"]) == ("lagging", "shipped", "hit")
        assert 1.0 <= body["lag_s"] < Settings().freshness_max_lag_s

        report_progress(redis, partition, 90, 100, time.time(), time.time() - 30)    # behind by half a minute
        r = api.get(f"/api/orders/{order_id}")
        body = ok(r)
        assert (body["freshness"], body["status"], body["last_seq"], body["lag_s"], r.headers["X-Cache"]) == \
            ("write-model", "pending", 1, None, "bypass")
        history = ok(api.get(f"/api/customers/{customer_id}/orders"))
        assert history["freshness"] == "lagging" and history["lag_s"] >= 30 and history["total"] == 1

        report_progress(redis, partition, 100, 100, time.time() - 10, None)  # caught up 10 s ago, stopped since
        publish_head(db, partition, 101)                                       # and one event published after
        body = wait_until("view lagging behind the new head", lambda: (b := ok(api.get(f"/api/orders/{order_id}")))
                          ["freshness"] == "write-model" and b)
        assert body["status"] == "pending"

        other = (partition + 1) % Settings().topic_partitions                  # another partition lags, not this one
        report_progress(redis, partition, 101, 101, time.time(), None)
        report_progress(redis, other, 0, 50, time.time(), time.time() - 60)
        body = wait_until("view current again", lambda: (b := ok(api.get(f"/api/orders/{order_id}")))
                          ["freshness"] == "current" and b)
        assert body["status"] == "shipped"
        history = ok(api.get(f"/api/customers/{customer_id}/orders"))
        assert history["freshness"] == "lagging" and history["lag_s"] >= 60    # a list is as stale as its stalest
    finally:
        db.execute("delete from stream_heads where topic = %s", (TOPIC_PREFIX + "order-events",))
        redis.hdel(progress_key(consumer_group("order-views")),
                   *(progress_field(TOPIC_PREFIX + "order-events", p) for p in range(Settings().topic_partitions)))
        mongo_db[ORDER_VIEWS].delete_one({"_id": order_id})
        mongo_db[CUSTOMER_HISTORY].delete_many({"customer_id": customer_id})
        invalidate_order(redis, order_id, customer_id)


def test_unknown_order_is_404(api: httpx.Client, redis) -> None:
    order_id = str(uuid.uuid4())
    refused(api.get(f"/api/orders/{order_id}"), 404, "order_not_found", "order_id")
    assert redis.exists(order_cache_key(order_id)) == 0  # the miss's lease was given back


def test_order_is_cached_until_invalidated(api: httpx.Client, mongo_db, redis) -> None:
    order_id, customer_id = uid("o"), uid("c")
    mongo_db[ORDER_VIEWS].insert_one(order_view(order_id, customer_id))
    hits = cache_count(api, "GetOrder", "hit")
    misses = cache_count(api, "GetOrder", "miss")

    first = api.get(f"/api/orders/{order_id}")
    second = api.get(f"/api/orders/{order_id}")
    assert first.headers["X-Cache"] == "miss" and second.headers["X-Cache"] == "hit"
    assert ok(first) == ok(second)
    assert cache_count(api, "GetOrder", "miss") == misses + 1
    assert cache_count(api, "GetOrder", "hit") == hits + 1
    assert 0 < redis.ttl(order_cache_key(order_id)) <= 60

    # the view disappears, but the cached copy answers until the projection invalidates it
    mongo_db[ORDER_VIEWS].delete_one({"_id": order_id})
    r = api.get(f"/api/orders/{order_id}")
    assert ok(r)["freshness"] == "current" and r.headers["X-Cache"] == "hit"
    assert invalidate_order(redis, order_id, customer_id) == 1
    refused(api.get(f"/api/orders/{order_id}"), 404, "order_not_found", "order_id")


def test_invalidation_between_read_and_fill_keeps_the_old_value_out(stack: Settings) -> None:
    """A reader that read before a projection's write + invalidation must not cache what it read."""

    async def scenario() -> None:
        r = async_redis_client(stack)
        cache = QueryCache(r)
        order_id, customer_id = uid("o"), uid("c")
        try:
            miss = await cache.order(order_id)
            assert not miss.hit and miss.lease
            other = await cache.order(order_id)  # a concurrent reader sees the lease: reads through
            assert not other.hit and other.lease is None
            assert await invalidate_order(r, order_id, customer_id) == 1  # the projection wrote meanwhile
            assert await cache.fill(miss, '{"old": true}') is False
            assert await r.exists(order_cache_key(order_id)) == 0

            page = await cache.customer_page(customer_id, 1, 20)
            assert not page.hit and page.lease
            await invalidate_order(r, order_id, customer_id)
            assert await cache.fill(page, '{"old": true}') is False
            assert await r.exists(customer_history_cache_key(customer_id)) == 0

            page = await cache.customer_page(customer_id, 2, 5)
            assert await cache.fill(page, '{"page": 2}') is True
            again = await cache.customer_page(customer_id, 2, 5)
            assert again.hit and again.value == '{"page": 2}'
            assert await r.hget(customer_history_cache_key(customer_id), "2:5") == '{"page": 2}'
            assert 0 < await r.ttl(customer_history_cache_key(customer_id)) <= 60
        finally:
            await invalidate_order(r, order_id, customer_id)
            await r.aclose()

    asyncio.run(scenario())


# ---- customer order history -----------------------------------------------------------------------

def test_customer_history_newest_first_paginated_and_cached(api: httpx.Client, mongo_db, redis) -> None:
    customer_id = uid("c")
    entries = {"o-a": history_entry("o-a", at(3)), "o-b": history_entry("o-b", at(5), "25.00"),
               "o-c": history_entry("o-c", at(4)), "o-e": history_entry("o-e", at(5)),
               "o-d": history_entry("o-d", at(1))}
    mongo_db[CUSTOMER_HISTORY].insert_many([{"_id": history_entry_id(customer_id, oid), "customer_id": customer_id,
                                             **entry} for oid, entry in entries.items()])
    newest_first = ["o-b", "o-e", "o-c", "o-a", "o-d"]  # date descending, ties by order id
    try:
        seen = []
        for page in (1, 2, 3):
            r = api.get(f"/api/customers/{customer_id}/orders", params={"page": page, "size": 2})
            body = ok(r)
            assert r.headers["X-Cache"] == "miss"
            assert (body["customer_id"], body["page"], body["size"], body["total"]) == (customer_id, page, 2, 5)
            seen += [o["order_id"] for o in body["orders"]]
        assert seen == newest_first
        first = ok(api.get(f"/api/customers/{customer_id}/orders", params={"size": 2}))["orders"][0]
        assert first == {"order_id": "o-b", "date": "2024-05-05T10:00:00.000Z", "total": "25.00",
                         "status": "pending", "last_seq": 1,
                         "products": [{"product_id": "p07", "name": "Wireless Charger", "price": "29.99",
                                       "image_url": "https://img.example/p07.jpg", "quantity": 1}]}
        past_end = ok(api.get(f"/api/customers/{customer_id}/orders", params={"page": 4, "size": 2}))
        assert past_end["orders"] == [] and past_end["total"] == 5
        default = ok(api.get(f"/api/customers/{customer_id}/orders"))
        assert (default["page"], default["size"], len(default["orders"])) == (1, 20, 5)

        # cached per page under one hash; a projection's invalidation drops every page at once
        r = api.get(f"/api/customers/{customer_id}/orders", params={"page": 1, "size": 2})
        assert r.headers["X-Cache"] == "hit"
        assert set(redis.hkeys(customer_history_cache_key(customer_id))) >= {"1:2", "2:2", "3:2", "1:20"}
        mongo_db[CUSTOMER_HISTORY].insert_one({"_id": history_entry_id(customer_id, "o-f"), "customer_id": customer_id,
                                               **history_entry("o-f", at(9))})
        assert ok(api.get(f"/api/customers/{customer_id}/orders", params={"size": 2}))["total"] == 5
        invalidate_order(redis, "o-f", customer_id)
        body = ok(api.get(f"/api/customers/{customer_id}/orders", params={"size": 2}))
        assert body["total"] == 6 and body["orders"][0]["order_id"] == "o-f"
    finally:
        invalidate_order(redis, "o-f", customer_id)


def test_customer_without_history(api: httpx.Client, commands: httpx.Client) -> None:
    customer_id = create_customer(commands, name="No Orders Yet")
    body = ok(api.get(f"/api/customers/{customer_id}/orders"))
    assert body == {"customer_id": customer_id, "orders": [], "page": 1, "size": 20, "total": 0,
                    "freshness": "current", "lag_s": None}
    refused(api.get(f"/api/customers/{uuid.uuid4()}/orders"), 404, "customer_not_found", "customer_id")


# ---- product search -------------------------------------------------------------------------------

def search(api: httpx.Client, **params: Any) -> dict:
    body = ok(api.get("/api/products/search", params=params))
    assert set(body) == {"results", "total", "took_ms", "page", "size", "freshness", "lag_s"}
    assert (body["freshness"], body["lag_s"]) == ("current", None)  # nothing published on this prefix
    assert isinstance(body["took_ms"], int)
    return body


def ids(body: dict) -> list[str]:
    return [p["product_id"] for p in body["results"]]


def test_search_seed_example(api: httpx.Client) -> None:
    body = search(api, q="wireless headphones", max_price=100, category="Electronics")
    top = body["results"][0]
    assert top == {"product_id": "p01", "name": "Wireless Headphones", "category": "Electronics", "price": 79.99,
                   "price_text": "79.99", "rating": 4.5, "in_stock": True,
                   "image_url": "https://img.example/p01.jpg", "purchase_count": 120}
    assert ids(body) == ["p01", "p04"]  # p04: "wireless" in its tags, "headphones" in its name
    assert body["total"] == 2 and (body["page"], body["size"]) == (1, 20)
    # without the price cap the premium pair joins; every word must match, so the mouse never does
    assert set(ids(search(api, q="wireless headphones"))) == {"p01", "p02", "p04"}
    assert ids(search(api, q="wireles headphone", category="Electronics", max_price=100))[0] == "p01"  # typos


def test_search_allows_typos_only_when_the_words_as_typed_find_nothing(api: httpx.Client, stack: Settings) -> None:
    category = f"Typos-{UID}"
    extra = [product("t1", "Desk Lamp", category, 120.0, tags=["light"], description="Brass.", rating=4.0,
                     purchases=1, day=11),
             product("t2", "Lamb Wool Throw", category, 130.0, tags=["blanket"], description="Soft.", rating=4.0,
                     purchases=1, day=12)]
    es = es_client(stack)
    try:
        es.bulk(operations=[x for doc in extra for x in ({"index": {"_index": INDEX, "_id": doc["product_id"]}}, doc)],
                refresh=True)
        # "lamb" is one edit from "lamp": a typo neighbour, not shown while the word itself matches
        assert ids(search(api, q="lamp", category=category)) == ["t1"]
        assert ids(search(api, q="lamb", category=category)) == ["t2"]
        # nothing matches "lmap" as typed, so the search is asked again allowing typos
        assert ids(search(api, q="lmap", category=category)) == ["t1"]
        assert search(api, q="zzzz", category=category)["total"] == 0
    finally:
        es.bulk(operations=[{"delete": {"_index": INDEX, "_id": doc["product_id"]}} for doc in extra], refresh=True)
        es.close()


@pytest.mark.parametrize("sort, key", [
    ("price_asc", lambda p: (p["price"], p["product_id"])),
    ("price_desc", lambda p: (-p["price"], p["product_id"])),
    ("rating", lambda p: (-p["rating"], p["product_id"])),
    ("newest", lambda p: (-datetime.fromisoformat(p["created_at"].replace("Z", "+00:00")).timestamp(),
                          p["product_id"])),
    ("popular", lambda p: (-p["purchase_count"], p["product_id"])),
    ("relevance", lambda p: p["product_id"]),  # no text: every score equal, ties by id
])
def test_search_sorting(api: httpx.Client, sort: str, key) -> None:
    body = search(api, sort=sort, size=100)
    assert ids(body) == [p["product_id"] for p in sorted(PRODUCTS, key=key)]
    assert body["total"] == len(PRODUCTS)


def test_search_relevance_ranks_the_best_match_first(api: httpx.Client) -> None:
    found = ids(search(api, q="wireless"))
    assert set(found[:4]) == {"p01", "p02", "p03", "p07"}  # the word in the name ranks above the word in tags
    assert set(found[4:]) == {"p04", "p10"}
    popular = search(api, q="wireless", sort="popular")
    counts = [p["purchase_count"] for p in popular["results"]]
    assert counts == sorted(counts, reverse=True)


def test_search_pagination(api: httpx.Client) -> None:
    everything = ids(search(api, sort="price_asc", size=100))
    pages = [search(api, sort="price_asc", size=3, page=n) for n in (1, 2, 3, 4, 5)]
    assert [p["page"] for p in pages] == [1, 2, 3, 4, 5]
    assert all(p["total"] == len(PRODUCTS) and p["size"] == 3 for p in pages)
    assert [len(p["results"]) for p in pages] == [3, 3, 3, 1, 0]
    assert sum((ids(p) for p in pages), []) == everything


def test_search_filters(api: httpx.Client) -> None:
    books = search(api, category="Books", sort="price_asc")
    assert ids(books) == ["p09", "p08"] and books["results"][1]["price"] == 39.5
    assert books["results"][1]["price_text"] == "39.50"
    ranged = search(api, min_price=20, max_price=60, sort="price_asc")
    assert ids(ranged) == ["p03", "p07", "p08", "p10"]
    assert ids(search(api, min_price="59.99", max_price="59.99")) == ["p10"]  # inclusive bounds
    assert ids(search(api, in_stock="false", sort="price_asc")) == ["p06", "p09"]
    assert "p06" not in ids(search(api, in_stock="true", size=100))
    assert search(api, category="electronics")["total"] == 0  # categories are exact values
    assert ids(search(api, q="audio", category="Electronics", in_stock="true", max_price=90, sort="price_desc")) == \
        ["p04", "p01", "p10"]


def test_search_before_any_product_index_exists(spawn_query_api, mongo_db, token: str) -> None:
    missing = spawn_query_api("no-index", MONGO_DATABASE=MONGO_DB, ES_PRODUCTS_ALIAS=f"products-missing-{UID}",
                              TOPIC_PREFIX=TOPIC_PREFIX)
    with make_client(missing.base_url, token) as c:
        for params in ({}, {"q": "wireless headphones", "sort": "price_asc", "category": "Electronics"}):
            r = c.get("/api/products/search", params=params)
            assert r.status_code == 200, r.text
            assert r.json() | {"took_ms": 0} == {"results": [], "total": 0, "took_ms": 0, "page": 1, "size": 20,
                                                 "freshness": "current", "lag_s": None}


def test_a_store_that_is_down_is_503_and_the_others_still_answer(spawn_query_api, mongo_db, redis,
                                                                 token: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    degraded = spawn_query_api("no-es", ready_path="/healthz", MONGO_DATABASE=MONGO_DB, ELASTICSEARCH_URL=dead,
                               ES_PRODUCTS_ALIAS=ALIAS, TOPIC_PREFIX=TOPIC_PREFIX)
    order_id = uid("o")
    mongo_db[ORDER_VIEWS].insert_one(order_view(order_id, "c-1"))
    try:
        with make_client(degraded.base_url, token) as c:
            r = c.get("/readyz")
            assert r.status_code == 503, r.text
            assert r.json()["status"] == "unavailable" and r.json()["reason"].startswith("elasticsearch")
            assert r.json()["checks"]["mongodb"] == "ok"
            body = refused(c.get("/api/products/search", params={"q": "wireless"}), 503, "service_unavailable")
            assert body["service"] == "elasticsearch"
            assert ok(c.get(f"/api/orders/{order_id}"))["freshness"] == "current"
            assert ok(c.get("/api/dashboard/sales"))["hours"]
    finally:
        invalidate_order(redis, order_id, "c-1")


# ---- dashboard ------------------------------------------------------------------------------------

def test_sales_dashboard_has_every_hour(api: httpx.Client, redis) -> None:
    day = (datetime(1990, 1, 1) + timedelta(days=random.randrange(3000))).strftime("%Y-%m-%d")
    key = sales_day_key(day)
    redis.hset(key, mapping={"orders": 5, "revenue_cents": 12345, "hour:09:orders": 3,
                             "hour:09:revenue_cents": 10000, "hour:17:orders": 2, "hour:17:revenue_cents": 2345})
    try:
        body = ok(api.get("/api/dashboard/sales", params={"day": day}))
        assert (body["day"], body["orders"], body["revenue"]) == (day, 5, "123.45")
        assert [h["hour"] for h in body["hours"]] == [f"{h:02d}" for h in range(24)]
        assert body["hours"][9] == {"hour": "09", "orders": 3, "revenue": "100.00"}
        assert body["hours"][17] == {"hour": "17", "orders": 2, "revenue": "23.45"}
        assert all(h["orders"] == 0 and h["revenue"] == "0.00" for i, h in enumerate(body["hours"]) if i not in (9, 17))
    finally:
        redis.delete(key)
    empty = ok(api.get("/api/dashboard/sales", params={"day": "1980-02-29"}))
    assert (empty["orders"], empty["revenue"], len(empty["hours"])) == (0, "0.00", 24)


def test_sales_dashboard_defaults_to_today_utc(api: httpx.Client) -> None:
    before = datetime.now(UTC).date().isoformat()
    body = ok(api.get("/api/dashboard/sales"))
    after = datetime.now(UTC).date().isoformat()
    assert body["day"] in (before, after) and len(body["hours"]) == 24


# ---- validation and injection ---------------------------------------------------------------------

@pytest.mark.parametrize("path, params, field", [
    ("/api/products/search", {"size": 0}, "size"),
    ("/api/products/search", {"size": 101}, "size"),
    ("/api/products/search", {"page": 0}, "page"),
    ("/api/products/search", {"page": 101, "size": 100}, "page"),
    ("/api/products/search", {"min_price": 50, "max_price": 10}, "min_price"),
    ("/api/products/search", {"min_price": "cheap"}, "min_price"),
    ("/api/products/search", {"max_price": -1}, "max_price"),
    ("/api/products/search", {"sort": "cheapest"}, "sort"),
    ("/api/products/search", {"in_stock": "maybe"}, "in_stock"),
    ("/api/products/search", {"q": "x" * 201}, "q"),
    ("/api/dashboard/sales", {"day": "2024-02-30"}, "day"),
    ("/api/dashboard/sales", {"day": "20240101"}, "day"),
    ("/api/dashboard/sales", {"day": "2024-1-01"}, "day"),
    ("/api/dashboard/sales", {"day": "today"}, "day"),
    ("/api/customers/c-1/orders", {"size": 0}, "size"),
    ("/api/customers/c-1/orders", {"page": 0}, "page"),
    ("/api/customers/c-1/orders", {"size": 500}, "size"),
    ("/api/orders/" + "x" * 65, {}, "order_id"),
    ("/api/orders/bad id!", {}, "order_id"),
    ('/api/orders/{"$ne":1}', {}, "order_id"),
    ('/api/customers/{"$gt":""}/orders', {}, "customer_id"),
])
def test_invalid_parameters_are_422_naming_the_field(api: httpx.Client, path: str, params: dict, field: str) -> None:
    refused(api.get(path, params=params), 422, "validation_error", field)


def test_input_is_only_ever_a_literal(api: httpx.Client, mongo_db, redis) -> None:
    # an operator-looking id: refused before any store sees it (also as a query-string array)
    refused(api.get("/api/orders/%7B%22%24ne%22%3A1%7D"), 422, "validation_error", "order_id")
    refused(api.get("/api/orders/$where"), 422, "validation_error", "order_id")
    # search text is matched as words, never parsed as a query
    for q in ('{"$gt": ""}', '{"match_all": {}}', "*", "name:* OR *:*", "wireless AND NOT headphones", "\\\"/)("):
        body = search(api, q=q)
        assert all(r["product_id"] for r in body["results"])
        if q in ('{"$gt": ""}', '{"match_all": {}}', "*", "\\\"/)("):
            assert body["total"] == 0, (q, ids(body))
    assert search(api, category='{"match_all": {}}')["total"] == 0
    assert search(api, category="*")["total"] == 0
    # an id with the allowed punctuation is an exact value
    mongo_db[ORDER_VIEWS].insert_one(order_view("o.dotted:1", "c-1"))
    try:
        assert ok(api.get("/api/orders/o.dotted:1"))["order_id"] == "o.dotted:1"
        refused(api.get("/api/orders/o.dotted"), 404, "order_not_found")
    finally:
        mongo_db[ORDER_VIEWS].delete_one({"_id": "o.dotted:1"})
        invalidate_order(redis, "o.dotted:1")
