"""The query API's per-request budget, end to end: a real `cqrs query-api` process whose MongoDB,
Elasticsearch or Redis address is a real TCP endpoint that refuses, never answers, drops connections
or stops answering mid-session (tests/e2e/netfaults.py), while the other stores are the real ones.

A query needing the faulty store answers `503 service_unavailable` naming it within QUERY_TIMEOUT_S
(plus HTTP overhead) — however many calls it makes to it — while queries not needing it answer 200
meanwhile. A faulty cache is bypassed: reads still answer, within the same bound."""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import httpx
import pytest
from redis.exceptions import RedisError

from app.queries.cache import invalidate_order
from agents.read_model_versions import READ_CACHE_S
from domain.read_models import CUSTOMER_HISTORY, ORDER_VIEWS, PRODUCTS_MAPPING, history_entry_id
from app.settings import Settings
from connectors.elasticsearch import es_client
from connectors.mongo import mongo_client
from connectors.redis import redis_client
from tests.e2e.conftest import create_customer, create_order, create_product, refused
from tests.e2e.netfaults import Faults, faults

QUERY_TIMEOUT_S = 2.0
BOUND_S = QUERY_TIMEOUT_S + 0.5  # the budget plus HTTP and scheduling overhead
UID = uuid.uuid4().hex[:10]
MONGO_DB = f"e2e_deadlines_{UID}"
ALIAS = f"products-deadlines-{UID}"
CUSTOMER = f"c-{UID}"
TOPIC_PREFIX = f"qd{UID}-"  # nothing is published there: the seeded views are current
ORDERS = (f"o-{UID}-a", f"o-{UID}-b")
SEARCH = ("/api/products/search", {"q": "lamp"})


class Answer(NamedTuple):
    response: httpx.Response
    elapsed: float
    done_at: float


def timed(client: httpx.Client, path: str, params: dict[str, Any] | None = None) -> Answer:
    start = time.monotonic()
    response = client.get(path, params=params)
    done = time.monotonic()
    return Answer(response, done - start, done)


def concurrently(client: httpx.Client, *requests: tuple[str, dict[str, Any] | None]) -> list[Answer]:
    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda r: timed(client, *r), requests))


def unavailable_in_time(answer: Answer, service: str) -> None:
    body = refused(answer.response, 503, "service_unavailable")
    assert body["service"] == service, body
    assert answer.elapsed <= BOUND_S, f"503 after {answer.elapsed:.2f}s, budget {QUERY_TIMEOUT_S}s"


def answered(answer: Answer, bound: float = BOUND_S) -> dict:
    assert answer.response.status_code == 200, answer.response.text
    assert answer.elapsed <= bound, f"200 after {answer.elapsed:.2f}s"
    return answer.response.json()


# ---- seeded read models (private to this module) -------------------------------------------------

@pytest.fixture(scope="module")
def seeded(stack: Settings) -> Iterator[None]:
    client, es = mongo_client(stack), es_client(stack)
    db = client[MONGO_DB]
    at = datetime(2024, 5, 1, 10, tzinfo=timezone.utc)
    db[ORDER_VIEWS].insert_many([{"_id": o, "order_id": o, "customer_id": CUSTOMER, "items": [], "total": "1.00",
                                  "status": "pending", "created_at": at, "last_seq": 1} for o in ORDERS])
    db[CUSTOMER_HISTORY].insert_many([{"_id": history_entry_id(CUSTOMER, o), "customer_id": CUSTOMER, "order_id": o,
                                       "date": at, "total": "1.00", "status": "pending", "products": [],
                                       "last_seq": 1} for o in ORDERS])
    es.indices.create(index=f"{ALIAS}-v1", mappings=PRODUCTS_MAPPING, aliases={ALIAS: {}},
                      settings={"number_of_shards": 1, "number_of_replicas": 0})
    es.index(index=ALIAS, id="p1", refresh=True, document={"product_id": "p1", "name": "Desk lamp", "price": 20.0,
                                                            "category": "Home", "in_stock": True})
    try:
        yield
    finally:
        clear_cache(stack)
        es.indices.delete(index=f"{ALIAS}-v1", ignore_unavailable=True)
        client.drop_database(MONGO_DB)
        client.close()
        es.close()


@pytest.fixture
def net() -> Iterator[Faults]:
    with faults() as made:
        yield made


@pytest.fixture
def query_api(spawn_query_api, seeded: None, token: str) -> Iterator:
    """query_api(**env) -> an httpx client of a fresh query API (budget QUERY_TIMEOUT_S) with these overrides."""
    started: list[tuple[Any, httpx.Client]] = []

    def start(**env: str) -> httpx.Client:
        app = spawn_query_api(f"deadlines-{uuid.uuid4().hex[:6]}", ready_path="/healthz", MONGO_DATABASE=MONGO_DB,
                              ES_PRODUCTS_ALIAS=ALIAS, QUERY_TIMEOUT_S=str(QUERY_TIMEOUT_S),
                              **{"TOPIC_PREFIX": TOPIC_PREFIX, **env})
        client = httpx.Client(base_url=app.base_url, timeout=30.0, headers={"Authorization": f"Bearer {token}"})
        started.append((app, client))
        return client

    yield start
    for app, client in started:  # stopped now rather than with the module: each test has its own
        client.close()
        app.stop()


def clear_cache(stack: Settings) -> None:
    """Drop this module's cache entries (best effort: they expire within a minute anyway)."""
    redis = redis_client(stack)
    try:
        for order in ORDERS:
            invalidate_order(redis, order, CUSTOMER)
    except RedisError:
        pass
    finally:
        redis.close()


# ---- MongoDB -------------------------------------------------------------------------------------

def test_mongodb_refusing_is_503_within_the_budget_while_search_answers(query_api, net: Faults,
                                                                        stack: Settings) -> None:
    clear_cache(stack)
    api = query_api(MONGO_URL=f"mongodb://127.0.0.1:{net.refusing()}/")
    order, history, search = concurrently(api, (f"/api/orders/{ORDERS[0]}", None),
                                          (f"/api/customers/{CUSTOMER}/orders", None), SEARCH)
    unavailable_in_time(order, "mongodb")
    unavailable_in_time(history, "mongodb")
    assert [p["product_id"] for p in answered(search)["results"]] == ["p1"]
    assert search.done_at < min(order.done_at, history.done_at), "search waited for MongoDB"


def test_mongodb_that_stops_answering_is_503_within_the_budget(query_api, net: Faults, stack: Settings) -> None:
    """The serving pointer is cached, then MongoDB hangs mid-session: re-reading the pointer and then
    reading the view share one budget (they used to take a timeout each, in sequence)."""
    clear_cache(stack)
    real = urlsplit(stack.mongo_url)
    mongo = net.proxy(real.hostname or "127.0.0.1", real.port or 27017)
    api = query_api(MONGO_URL=mongo.url("mongodb"))
    first = answered(timed(api, f"/api/orders/{ORDERS[0]}"))
    assert first["freshness"] == "current"

    mongo.go_silent()
    time.sleep(READ_CACHE_S + 0.2)  # the pointer has to be read again
    order, history, search, cached = concurrently(api, (f"/api/orders/{ORDERS[1]}", None),
                                                  (f"/api/customers/{CUSTOMER}/orders", None), SEARCH,
                                                  (f"/api/orders/{ORDERS[0]}", None))
    unavailable_in_time(order, "mongodb")
    unavailable_in_time(history, "mongodb")
    answered(search)
    assert answered(cached) == first and cached.response.headers["X-Cache"] == "hit"  # the cache still answers
    assert max(search.done_at, cached.done_at) < min(order.done_at, history.done_at)


# ---- Elasticsearch -------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["silent", "refusing", "dropping"])
def test_elasticsearch_fault_is_503_within_the_budget_while_orders_answer(query_api, net: Faults, stack: Settings,
                                                                          fault: str) -> None:
    """`dropping` closes each connection unanswered after 3/4 of the budget, which the client retries."""
    clear_cache(stack)
    url = {"silent": lambda: net.silent().url("http", ""),
           "refusing": lambda: f"http://127.0.0.1:{net.refusing()}",
           "dropping": lambda: net.dropping(QUERY_TIMEOUT_S * 0.75).url("http", "")}[fault]()
    api = query_api(ELASTICSEARCH_URL=url)
    search, order, history = concurrently(api, SEARCH, (f"/api/orders/{ORDERS[0]}", None),
                                           (f"/api/customers/{CUSTOMER}/orders", None))
    unavailable_in_time(search, "elasticsearch")
    assert answered(order)["freshness"] == "current"
    assert answered(history)["total"] == len(ORDERS)
    if fault != "refusing":
        assert max(order.done_at, history.done_at) < search.done_at, "orders waited for Elasticsearch"


# ---- Redis: a cache is bypassed, the sales counters are a store ----------------------------------

@pytest.mark.parametrize("fault", ["silent", "refusing"])
def test_a_failing_cache_is_bypassed_within_the_budget(query_api, net: Faults, client, fault: str) -> None:
    """Without Redis neither the cache nor the projections' progress can be read: an order comes from the
    write model, a list from its view marked `lagging` with an unknown lag, both within the budget."""
    customer = create_customer(client, name="Cacheless Reader")
    placed = create_order(client, customer, [(create_product(client, price="5.00"), 2)])["order_id"]
    port = net.silent().port if fault == "silent" else net.refusing()
    api = query_api(REDIS_URL=f"redis://127.0.0.1:{port}/0")
    for _ in range(2):  # the first read finds the cache failing, the second skips it
        order = timed(api, f"/api/orders/{placed}")
        body = answered(order)
        assert (body["order_id"], body["total"], body["freshness"]) == (placed, "10.00", "write-model")
        assert order.response.headers["X-Cache"] == "bypass"
        history = timed(api, f"/api/customers/{CUSTOMER}/orders")
        body = answered(history)
        assert (body["total"], body["freshness"], body["lag_s"]) == (len(ORDERS), "lagging", None)
        assert history.response.headers["X-Cache"] == "bypass"
    assert answered(timed(api, *SEARCH))["total"] == 1
    unavailable_in_time(timed(api, "/api/dashboard/sales"), "redis")  # the counters live there: no fallback
