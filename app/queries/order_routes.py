"""GetOrder and CustomerOrders: from the views while they are fresh enough, else from the write model,
and — given a consistency token or `min_version` — only once the view reflects the reader's own writes.

Without a consistency requirement a read goes through the cache. With one it reads MongoDB itself (a
cached copy may predate the write; its invalidation follows the view write), waiting between reads for
the projection's announcement (app/queries/own_writes.py), up to `wait_ms`. When the view does not
reflect the version in time, the write model answers (it always does: the command committed there).
"""
from __future__ import annotations

from typing import Annotated, Any

import psycopg
import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response
from psycopg_pool import PoolTimeout

from app.queries import reads, write_model
from app.queries.answers import (CustomerId, OrderId, PageNo, PageSize, RequestDeadline, announcements, dumps,
                                 freshness_reader, json_response, read_through, with_freshness)
from app.http.identity import Caller, requires
from app.http.rate_limit import rate_limited
from app.queries.models import NOT_FOUND, PROTECTED, CustomerOrders, OrderView
from app.queries.own_writes import MAX_WAIT_MS, until_reflected
from app.queries.stores import Deadline, StoreUnavailable, Stores, stores
from domain import access, consistency
from domain.access import Role
from domain.errors import NotFound
from domain.freshness import WRITE_MODEL, Freshness, State
from domain.read_models import customer_history_filter

router = APIRouter(prefix="/api", dependencies=[Depends(rate_limited)])
WRITE_MODEL_UNAVAILABLE = (psycopg.Error, PoolTimeout, StoreUnavailable)
ANSWER_MARGIN_S = 0.5  # of the request's budget, kept for answering from the write model after a wait

Token = Annotated[str | None, Header(alias=consistency.HEADER, max_length=4000, description=(
    "Read-your-writes: `order:<id>@<version>[,...]`, as the command gateway's answers carry it. The answer "
    "reflects at least those versions (waiting up to `wait_ms`), or comes from the write model."))]
MinVersion = Annotated[int | None, Query(ge=1, le=2**31 - 1, description=(
    "Read-your-writes for this order: answer only with a view of at least this version (the `version` of a "
    "command's answer), waiting up to `wait_ms`; otherwise the write model answers."))]
WaitMs = Annotated[int, Query(ge=0, le=MAX_WAIT_MS, description=(
    "How long a read with `min_version` or a consistency token may wait for the view, in ms (0-2000)."))]


def wait_s(deadline: Deadline, wait_ms: int) -> float:
    return max(0.0, min(wait_ms / 1000, deadline.remaining() - ANSWER_MARGIN_S))


async def order_doc(s: Stores, deadline: Deadline, order_id: str) -> dict[str, Any] | None:
    views = (await s.serving_record("order-views", deadline)).order_collections.views
    async with deadline.mongodb():
        doc = await s.db[views].find_one({"_id": order_id})
    return reads.order_body(doc) if doc is not None else None


async def from_write_model(s: Stores, deadline: Deadline, order_id: str) -> Response:
    async with deadline.within("postgresql") as seconds, s.pool.connection(timeout=seconds) as conn:
        snapshot = await write_model.order_snapshot(conn, order_id)
    if snapshot is None:
        raise NotFound(f"order {order_id} not found", code="order_not_found", field="order_id")
    return json_response(dumps({**reads.snapshot_body(snapshot), **WRITE_MODEL.fields()}), cache="bypass")


CUSTOMER_OR_ADMIN = [Depends(requires(Role.customer, Role.admin))]


@router.get("/orders/{order_id}", name="GetOrder", response_model=OrderView, responses={**NOT_FOUND, **PROTECTED},
            dependencies=CUSTOMER_OR_ADMIN,
            summary="One order, from its view or, while the view lags more than FRESHNESS_MAX_LAG_S (or does not "
                    "reflect the version asked for in time), from the write model. Its customer or an admin.")
async def get_order(order_id: OrderId, request: Request, deadline: RequestDeadline, caller: Caller,
                    min_version: MinVersion = None, wait_ms: WaitMs = 1000, token: Token = None) -> Response:
    answer = await order_answer(order_id, request, deadline, min_version, wait_ms, token)
    if not caller.has(Role.admin):  # whose order it is shows only once it is read, from whichever source
        access.require_customer_access(caller, orjson.loads(answer.body)["customer_id"])
    return answer


async def order_answer(order_id: str, request: Request, deadline: Deadline, min_version: int | None, wait_ms: int,
                       token: str | None) -> Response:
    s, reader = stores(request), freshness_reader(request)
    wanted = max(min_version or 0, consistency.parse_token(token).get(order_id, 0))
    freshness = await reader.of_order(s, deadline, order_id)  # before the read: the view is at least this new
    acceptable = freshness.within(reader.max_lag_s)
    if wanted and acceptable:
        channel, field = reader.order_partition(order_id)

        async def read() -> tuple[Freshness, dict[str, Any] | None]:
            return await reader.of_order(s, deadline, order_id), await order_doc(s, deadline, order_id)

        (freshness, doc), reflected = await until_reflected(
            read, lambda got: got[1] is not None and (got[1]["last_seq"] or 0) >= wanted,
            lambda: [announcements(request).arm(channel, field)], wait_s(deadline, wait_ms))
        if reflected:
            return json_response(dumps({**doc, **freshness.fields()}), cache="bypass")
        return await from_write_model(s, deadline, order_id)

    async def view() -> bytes | None:
        doc = await order_doc(s, deadline, order_id)
        return dumps(doc) if doc is not None else None

    def cached_view():
        return read_through("GetOrder", s, deadline, lambda: s.cache.order(order_id), view)

    if acceptable and (served := await cached_view()) is not None:
        return json_response(with_freshness(served[0], freshness), cache=served[1])
    try:
        return await from_write_model(s, deadline, order_id)
    except WRITE_MODEL_UNAVAILABLE:
        # the view lags (or its lag is unknown) and the write model cannot answer: the view, saying so
        if acceptable or wanted or (served := await cached_view()) is None:
            raise
        return json_response(with_freshness(served[0], freshness), cache=served[1])


@router.get("/customers/{customer_id}/orders", name="CustomerOrders", response_model=CustomerOrders,
            responses={**NOT_FOUND, **PROTECTED}, dependencies=CUSTOMER_OR_ADMIN,
            summary="A customer's orders, newest first, paginated. The customer or an admin.")
async def customer_orders(customer_id: CustomerId, request: Request, deadline: RequestDeadline, caller: Caller,
                          page: PageNo = 1, size: PageSize = 20, wait_ms: WaitMs = 1000,
                          token: Token = None) -> Response:
    access.require_customer_access(caller, customer_id)
    s, reader = stores(request), freshness_reader(request)
    wanted = consistency.parse_token(token)  # orders of this customer the page must reflect

    async def entries() -> list[dict[str, Any]]:
        collection = s.db[(await s.serving_record("order-views", deadline)).order_collections.history]
        async with deadline.mongodb():
            return await collection.find(customer_history_filter(customer_id), {"_id": 0}).to_list(None)

    if wanted:
        async def read() -> tuple[Freshness, list[dict[str, Any]]]:
            return await reader.of_projection(s, deadline, "order-views"), await entries()

        def reflected(got: tuple[Freshness, list[dict[str, Any]]]) -> bool:
            seen = {e["order_id"]: e.get("last_seq") or 0 for e in got[1]}
            return all(seen.get(order, 0) >= version for order, version in wanted.items())

        partitions = [reader.order_partition(order) for order in wanted]
        (freshness, found), done = await until_reflected(
            read, reflected, lambda: [announcements(request).arm(c, f) for c, f in partitions],
            wait_s(deadline, wait_ms))
        if not done:  # the page misses the reader's own write: never `current`, whatever the partitions say
            freshness = Freshness(State.lagging, freshness.lag_s if freshness.state is State.lagging else None)
        if found:
            return json_response(dumps({**reads.history_page(customer_id, found, page, size), **freshness.fields()}),
                                 cache="bypass")
    else:
        freshness = await reader.of_projection(s, deadline, "order-views")

        async def history() -> bytes | None:
            found = await entries()
            return dumps(reads.history_page(customer_id, found, page, size)) if found else None

        served = await read_through("CustomerOrders", s, deadline,
                                    lambda: s.cache.customer_page(customer_id, page, size), history)
        if served is not None:
            return json_response(with_freshness(served[0], freshness), cache=served[1])
    async with deadline.within("postgresql") as seconds, s.pool.connection(timeout=seconds) as conn:
        known = await write_model.customer_exists(conn, customer_id)
    if not known:
        raise NotFound(f"customer {customer_id} not found", code="customer_not_found", field="customer_id")
    return json_response(dumps({**reads.history_page(customer_id, None, page, size), **freshness.fields()}),
                         cache="bypass")
