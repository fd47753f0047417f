"""The HTTP query API: the app, its error handlers, product search and the sales dashboard (orders and
histories are in app/queries/order_routes.py). It reads the read models the projections maintain
(domain/read_models.py): order views and customer histories in MongoDB, the product index in
Elasticsearch, sales counters in Redis. Hot reads are cached in Redis (app/queries/cache.py). Every
answer carries `freshness` (app/queries/freshness.py). Every store call of a request shares one time
budget, QUERY_TIMEOUT_S (app/queries/stores.py `Deadline`): a store that is down or hangs answers 503
naming it within that budget, and only the queries needing that store are affected; the cache is
bypassed rather than waited for."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import AsyncIterator
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Annotated, Any

import psycopg
from elasticsearch import ApiError, NotFoundError, TransportError
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import Histogram
from psycopg_pool import PoolTimeout
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from app.http.errors import error_body
from app.http.identity import requires
from app.http.rate_limit import rate_limited
from app.http.metrics import LATENCY_BUCKETS
from app.http.service import service_app
from app.operations import dashboard
from app.queries import order_routes, reads
from app.queries.answers import PageNo, PageSize, RequestDeadline, dumps, freshness_reader, json_response
from app.queries.freshness import FreshnessReader
from app.queries.heads import HeadsFollower
from app.queries.models import ERRORS, PROTECTED, SalesDay, SearchResults, Sort
from app.queries.own_writes import Announcements
from app.queries.stores import Deadline, StoreUnavailable, Stores, stores
from app.settings import Settings, get_settings
from connectors import postgres
from domain import access
from domain.errors import InvalidCommand
from domain.read_models import sales_day_key
from schemas import TOPICS

log = logging.getLogger(__name__)

QUERY_LATENCY = Histogram("query_duration_seconds", "Query handling time by query and HTTP status",
                          ["query", "outcome"], buckets=LATENCY_BUCKETS)

DAY_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
router = APIRouter(prefix="/api", dependencies=[Depends(rate_limited)])


@router.get("/products/search", name="SearchProducts", response_model=SearchResults, responses=ERRORS,
            openapi_extra={"security": [{}, {"bearer": []}]},
            summary="Full-text product search with filters, sorting and pagination. Public: the catalogue is "
                    "what the shop shows every visitor (a token, if sent, must be valid).")
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
    freshness = await freshness_reader(request).of_projection(s, deadline, "product-search")
    ask = functools.partial(reads.search_request, q=q, category=category, min_price=min_price, max_price=max_price,
                            in_stock=in_stock, sort=sort.value, page=page, size=size)
    try:
        # ignore_unavailable: before the first index exists the alias is missing -> no results, not an error
        found = await _search(s, deadline, ask())
        if reads.retry_with_typos(q, found):
            found = await _search(s, deadline, ask(typos=True))
    except NotFoundError:
        return json_response(dumps({**reads.empty_search(page, size), **freshness.fields()}))
    return json_response(dumps({**reads.search_body(found, page, size), **freshness.fields()}))


async def _search(s: Stores, deadline: Deadline, body: dict[str, Any]) -> dict[str, Any]:
    """One search of the products alias within what is left of the request's deadline. The deadline's own
    timeout bounds the call: a per-call `es.options(request_timeout=...)` would build a copy of the client and
    its ~40 API namespaces on every search (about a third of the query API's CPU per search)."""
    async with deadline.within("elasticsearch"):
        found = await s.es.search(index=s.products_alias, ignore_unavailable=True, from_=body.pop("from"), **body)
    return found.body


@router.get("/dashboard/sales", name="SalesDashboard", response_model=SalesDay, responses=PROTECTED,
            dependencies=[Depends(requires(*access.DASHBOARDS))],
            summary="A day's orders and revenue, in total and per UTC hour. Admins and operators.")
async def sales_dashboard(
        request: Request, deadline: RequestDeadline,
        day: Annotated[str | None, Query(description="YYYY-MM-DD (UTC); today if omitted")] = None) -> Response:
    when = parse_day(day) if day is not None else datetime.now(timezone.utc).date()
    s = stores(request)
    freshness = await freshness_reader(request).of_projection(s, deadline, "sales-stats")
    prefix = (await s.serving_record("sales-stats", deadline)).sales_prefix
    async with deadline.within("redis"):  # the counters live in Redis: here it is the store, not a cache
        counters = await s.redis.hgetall(sales_day_key(when.isoformat(), prefix))
    return json_response(dumps({**reads.sales_body(when, counters), **freshness.fields()}))


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
        heads = HeadsFollower(postgres.conninfo(settings), settings.connect_timeout_s,
                              [settings.topic_prefix + t for t in TOPICS])
        app.state.freshness = reader = FreshnessReader(settings, heads, time.time)
        app.state.announcements = Announcements(app.state.stores.redis, [reader.order_views_channel])
        following = [asyncio.create_task(heads.run(), name="published-heads"),
                     asyncio.create_task(app.state.announcements.run(), name="announcements")]
        await app.state.stores.open()
        try:
            yield
        finally:
            for task in following:
                task.cancel()
            await asyncio.gather(*following, return_exceptions=True)
            await app.state.stores.close()

    app = service_app(title="CQRS query API", lifespan=lifespan, settings=settings, latency=QUERY_LATENCY,
                      label="query",
                      description="Reads the denormalized read models (MongoDB order views and histories, the "
                                  "Elasticsearch product index, Redis sales counters). Order and history reads are "
                                  "cached in Redis (`X-Cache: hit|miss|bypass`). Every answer says how fresh it is "
                                  "(`freshness`: current, lagging with `lag_s`, or write-model); an order whose view "
                                  "lags more than FRESHNESS_MAX_LAG_S, or is not projected yet, is read from the "
                                  "write model.")
    install_unavailable_handlers(app)
    app.include_router(order_routes.router)
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
