"""The HTTP query API. It reads the read models the projections maintain (domain/read_models.py): order
views and customer histories in MongoDB, the product index in Elasticsearch, sales counters in Redis.
Hot reads are cached in Redis (app/queries/cache.py). An order its projection has not written yet is
read from the write model and marked `"freshness": "stale"`. Every store call of a request shares one
time budget, QUERY_TIMEOUT_S (app/queries/stores.py `Deadline`): a store that is down or hangs
answers 503 naming it within that budget, and only the queries needing that store are affected; the
cache is bypassed rather than waited for."""
from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date, datetime, timezone
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, TypeVar

import orjson
import psycopg
from elasticsearch import ApiError, NotFoundError, TransportError
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import Counter, Histogram
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, Field
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from app.http.errors import error_body
from app.http.metrics import LATENCY_BUCKETS
from app.http.service import service_app
from app.operations import dashboard
from app.queries import reads, write_model
from app.queries.cache import Lookup
from app.queries.stores import Deadline, StoreUnavailable, Stores, request_deadline, stores
from domain.read_models import sales_day_key
from app.settings import Settings, get_settings
from domain.errors import InvalidCommand, NotFound

log = logging.getLogger(__name__)

QUERY_LATENCY = Histogram("query_duration_seconds", "Query handling time by query and HTTP status",
                          ["query", "outcome"], buckets=LATENCY_BUCKETS)
CACHE_LOOKUPS = Counter("query_cache", "Query cache lookups by query and result (hit, miss, error: failed or "
                        "no answer in time; bypass: skipped after a recent failure)", ["query", "result"])
T = TypeVar("T")

ID_PATTERN = r"^[A-Za-z0-9_.:-]+$"
DAY_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
OrderId = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN, description="Order id")]
CustomerId = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN, description="Customer id")]
PageNo = Annotated[int, Query(ge=1, le=reads.MAX_RESULT_WINDOW, description="1-based page number")]
PageSize = Annotated[int, Query(ge=1, le=100, description="Results per page (1-100)")]
RequestDeadline = Annotated[Deadline, Depends(request_deadline)]
JSON = "application/json"


# ---- response documents (OpenAPI) -----------------------------------------------------------------

class Error(BaseModel):
    code: str
    message: str
    field: str | None = None


class OrderItem(BaseModel):
    product_id: str
    product_name: str | None
    product_image: str | None
    quantity: int
    unit_price: str = Field(description="Decimal string, e.g. \"79.99\"")


class OrderView(BaseModel):
    order_id: str
    customer_id: str
    customer_name: str | None
    customer_email: str | None
    items: list[OrderItem]
    total: str = Field(description="Decimal string")
    status: str
    tracking_number: str | None
    created_at: str = Field(description="ISO-8601 UTC, e.g. 2024-05-01T10:00:00.000Z")
    updated_at: str | None
    last_seq: int | None = Field(description="Sequence number of the last order event reflected")
    freshness: str = Field(description="`fresh`: from the order view; `stale`: from the write model because "
                                       "the view is not written yet")


class HistoryProduct(BaseModel):
    product_id: str
    name: str | None
    price: str
    image_url: str | None
    quantity: int


class HistoryOrder(BaseModel):
    order_id: str
    date: str
    total: str
    status: str
    products: list[HistoryProduct]
    last_seq: int | None


class CustomerOrders(BaseModel):
    customer_id: str
    orders: list[HistoryOrder]
    page: int
    size: int
    total: int


class ProductHit(BaseModel):
    product_id: str
    name: str
    category: str
    price: float
    price_text: str
    rating: float | None
    in_stock: bool
    image_url: str | None
    purchase_count: int


class SearchResults(BaseModel):
    results: list[ProductHit]
    total: int
    took_ms: int
    page: int
    size: int


class HourSales(BaseModel):
    hour: str = Field(description="00-23 (UTC)")
    orders: int
    revenue: str


class SalesDay(BaseModel):
    day: str
    orders: int
    revenue: str
    hours: list[HourSales]


class Sort(str, Enum):
    relevance = "relevance"
    price_asc = "price_asc"
    price_desc = "price_desc"
    rating = "rating"
    newest = "newest"
    popular = "popular"


ERRORS = {422: {"model": Error, "description": "Invalid parameter (`field` names it)"},
          503: {"model": Error, "description": "A store the query needs is unavailable"}}
NOT_FOUND = {404: {"model": Error}}


# ---- wiring ---------------------------------------------------------------------------------------

def json_response(body: bytes | str, status_code: int = 200, cache: str | None = None) -> Response:
    return Response(body, status_code=status_code, media_type=JSON, headers={"X-Cache": cache} if cache else None)


def dumps(body: Any) -> bytes:
    return orjson.dumps(body)


async def cache_call(s: Stores, deadline: Deadline, call: Callable[[], Awaitable[T]]) -> T | None:
    """One cache call, within the cache's share of the budget; None when the cache is bypassed or fails.
    A failure (an error, or no answer in time) bypasses the cache for a while: reads never fail for it."""
    if not s.cache_guard.usable() or deadline.remaining() <= 0:
        return None
    try:
        async with deadline.within("redis", deadline.cache_limit()):
            return await call()
    except (RedisError, StoreUnavailable) as exc:
        log.warning("query cache bypassed for %gs: %s: %s", s.cache_guard.bypass_s, type(exc).__name__, exc)
        s.cache_guard.failed()
        return None


# ---- queries --------------------------------------------------------------------------------------

router = APIRouter(prefix="/api")


async def read_through(query: str, s: Stores, deadline: Deadline, key: Callable[[], Awaitable[Lookup]],
                       read: Callable[[], Awaitable[bytes | None]]) -> Response | None:
    """Serve a cache hit, or run `read` and cache its body; None when `read` found nothing (the caller
    then falls back, and nothing is cached). Without the cache, `read` answers (`X-Cache: bypass`)."""
    usable = s.cache_guard.usable()
    lookup = await cache_call(s, deadline, key)
    if lookup is not None:
        CACHE_LOOKUPS.labels(query, "hit" if lookup.hit else "miss").inc()
    else:
        CACHE_LOOKUPS.labels(query, "error" if usable else "bypass").inc()
    if lookup is not None and lookup.hit:
        return json_response(lookup.value, cache="hit")
    body: bytes | None = None
    try:
        body = await read()
    finally:
        if lookup is not None:  # fill the miss, or give its lease back when there is nothing to cache
            await cache_call(s, deadline, (lambda: s.cache.release(lookup)) if body is None else
                             (lambda: s.cache.fill(lookup, body.decode())))
    if body is None:
        return None
    return json_response(body, cache="miss" if lookup is not None else "bypass")


@router.get("/orders/{order_id}", name="GetOrder", response_model=OrderView, responses={**NOT_FOUND, **ERRORS},
            summary="One order, from its view or (while the projection lags) from the write model")
async def get_order(order_id: OrderId, request: Request, deadline: RequestDeadline) -> Response:
    s = stores(request)

    async def fresh() -> bytes | None:
        views = (await s.serving_record("order-views", deadline)).order_collections.views
        async with deadline.mongodb():
            doc = await s.db[views].find_one({"_id": order_id})
        return dumps(reads.order_body(doc, reads.FRESH)) if doc is not None else None

    served = await read_through("GetOrder", s, deadline, lambda: s.cache.order(order_id), fresh)
    if served is not None:
        return served
    async with deadline.within("postgresql") as seconds, s.pool.connection(timeout=seconds) as conn:
        snapshot = await write_model.order_snapshot(conn, order_id)
    if snapshot is None:
        raise NotFound(f"order {order_id} not found", code="order_not_found", field="order_id")
    return json_response(dumps(reads.snapshot_body(snapshot)), cache="bypass")


@router.get("/customers/{customer_id}/orders", name="CustomerOrders", response_model=CustomerOrders,
            responses={**NOT_FOUND, **ERRORS}, summary="A customer's orders, newest first, paginated")
async def customer_orders(customer_id: CustomerId, request: Request, deadline: RequestDeadline, page: PageNo = 1,
                          size: PageSize = 20) -> Response:
    s = stores(request)

    async def history() -> bytes | None:
        collection = s.db[(await s.serving_record("order-views", deadline)).order_collections.history]
        async with deadline.mongodb():
            entries = await collection.find({"customer_id": customer_id}, {"_id": 0}).to_list(None)
        return dumps(reads.history_page(customer_id, entries, page, size)) if entries else None

    served = await read_through("CustomerOrders", s, deadline, lambda: s.cache.customer_page(customer_id, page, size),
                                history)
    if served is not None:
        return served
    async with deadline.within("postgresql") as seconds, s.pool.connection(timeout=seconds) as conn:
        known = await write_model.customer_exists(conn, customer_id)
    if not known:
        raise NotFound(f"customer {customer_id} not found", code="customer_not_found", field="customer_id")
    return json_response(dumps(reads.history_page(customer_id, None, page, size)), cache="bypass")


@router.get("/products/search", name="SearchProducts", response_model=SearchResults, responses=ERRORS,
            summary="Full-text product search with filters, sorting and pagination")
async def search_products(
        request: Request, deadline: RequestDeadline,
        q: Annotated[str | None, Query(max_length=200, description="Words to find in name, tags, description")] = None,
        category: Annotated[str | None, Query(max_length=100, description="Exact category")] = None,
        min_price: Annotated[Decimal | None, Query(ge=0, le=10**10)] = None,
        max_price: Annotated[Decimal | None, Query(ge=0, le=10**10)] = None,
        in_stock: Annotated[bool | None, Query(description="Only products in (true) or out of (false) stock")] = None,
        sort: Annotated[Sort, Query(description="Result order")] = Sort.relevance,
        page: PageNo = 1, size: PageSize = 20) -> Response:
    if min_price is not None and max_price is not None and min_price > max_price:
        raise InvalidCommand("min_price must not exceed max_price", field="min_price")
    if page * size > reads.MAX_RESULT_WINDOW:
        raise InvalidCommand(f"page * size must not exceed {reads.MAX_RESULT_WINDOW}", field="page")
    q = (q or "").strip() or None
    category = (category or "").strip() or None
    s = stores(request)
    body = reads.search_request(q=q, category=category, min_price=min_price, max_price=max_price,
                                in_stock=in_stock, sort=sort.value, page=page, size=size)
    try:
        # ignore_unavailable: before the first index exists the alias is missing -> no results, not an error
        async with deadline.within("elasticsearch") as seconds:
            found = await s.es.options(request_timeout=seconds).search(
                index=s.products_alias, ignore_unavailable=True, from_=body.pop("from"), **body)
    except NotFoundError:
        return json_response(dumps(reads.empty_search(page, size)))
    return json_response(dumps(reads.search_body(found.body, page, size)))


@router.get("/dashboard/sales", name="SalesDashboard", response_model=SalesDay, responses=ERRORS,
            summary="A day's orders and revenue, in total and per UTC hour")
async def sales_dashboard(
        request: Request, deadline: RequestDeadline,
        day: Annotated[str | None, Query(description="YYYY-MM-DD (UTC); today if omitted")] = None) -> Response:
    when = parse_day(day) if day is not None else datetime.now(timezone.utc).date()
    s = stores(request)
    prefix = (await s.serving_record("sales-stats", deadline)).sales_prefix
    async with deadline.within("redis"):  # the counters live in Redis: here it is the store, not a cache
        counters = await s.redis.hgetall(sales_day_key(when.isoformat(), prefix))
    return json_response(dumps(reads.sales_body(when, counters)))


def parse_day(value: str) -> date:
    if not DAY_PATTERN.fullmatch(value):
        raise InvalidCommand("day must be a date as YYYY-MM-DD", field="day")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidCommand(f"day {value} is not a calendar date", field="day") from None


# ---- the app --------------------------------------------------------------------------------------

UNAVAILABLE: dict[type[BaseException], str] = {
    PyMongoError: "mongodb", TransportError: "elasticsearch", ApiError: "elasticsearch", RedisError: "redis",
    psycopg.Error: "postgresql", PoolTimeout: "postgresql",
}


def unavailable_response(service: str) -> JSONResponse:
    return JSONResponse(error_body("service_unavailable", f"{service} is unavailable", service=service),
                        status_code=503, headers={"Retry-After": "1"})


def install_unavailable_handlers(app: FastAPI) -> None:
    """A store that fails or does not answer within the request's budget answers 503 naming it, in the
    common error shape. (An Elasticsearch 4xx other than 429 is a malformed request of ours: 500.)"""
    async def out_of_time(_: Request, exc: StoreUnavailable) -> JSONResponse:
        log.warning("%s", exc)
        return unavailable_response(exc.service)

    app.add_exception_handler(StoreUnavailable, out_of_time)
    for exc_type, service in UNAVAILABLE.items():
        async def unavailable(_: Request, exc: Exception, service: str = service) -> JSONResponse:
            log.warning("%s failed: %s: %s", service, type(exc).__name__, exc)
            if isinstance(exc, ApiError) and 400 <= exc.meta.status < 500 and exc.meta.status != 429:
                return JSONResponse(error_body("internal_error", f"{service} refused the query"), status_code=500)
            return unavailable_response(service)

        app.add_exception_handler(exc_type, unavailable)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.stores = Stores(settings)
        await app.state.stores.open()
        try:
            yield
        finally:
            await app.state.stores.close()

    app = service_app(title="CQRS query API", lifespan=lifespan, settings=settings, latency=QUERY_LATENCY,
                      label="query",
                      description="Reads the denormalized read models (MongoDB order views and histories, the "
                                  "Elasticsearch product index, Redis sales counters). Order and history reads are "
                                  "cached in Redis (`X-Cache: hit|miss|bypass`); an order not yet projected is read "
                                  "from the write model and answered with `\"freshness\": \"stale\"`.")
    install_unavailable_handlers(app)
    app.include_router(router)
    app.include_router(dashboard.router)

    @app.get("/readyz", name="readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        checks = await stores(request).checks()
        failed = {name: result for name, result in checks.items() if result != "ok"}
        if failed:
            name, reason = next(iter(failed.items()))
            return JSONResponse({"status": "unavailable", "reason": f"{name}: {reason}", "checks": checks},
                                status_code=503)
        return JSONResponse({"status": "ready", "checks": checks})
    return app
