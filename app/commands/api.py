"""The HTTP command gateway. It validates input, runs one command per request and answers with the
new version; it never waits for read models (events reach them through the outbox relay)."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse
from prometheus_client import Histogram
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, Field

from app.commands.handlers import CommandContext, CommandHandlers, CommandResult, request_fingerprint
from app.commands.relay import OutboxRelay
from app.http.errors import ErrorBody
from app.http.identity import Caller, authenticated, requires
from app.http.rate_limit import rate_limited
from app.http.metrics import LATENCY_BUCKETS
from app.http.service import service_app
from app.settings import Settings, get_settings
from connectors import postgres
from app.operations.setup import prepare_event_codecs
from domain import access, consistency
from domain.access import Role
from domain.errors import InvalidCommand

COMMAND_LATENCY = Histogram("command_duration_seconds", "Command handling time by command and HTTP status",
                            ["command", "outcome"], buckets=LATENCY_BUCKETS)

Name = Annotated[str, Field(min_length=1, max_length=200)]
Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Price = Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=2)]
Quantity = Annotated[int, Field(gt=0, le=10_000)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class RegisterCustomer(Strict):
    name: Name
    email: Annotated[str, Field(min_length=3, max_length=254)]


class UpdateCustomer(Strict):
    name: Name | None = None
    email: Annotated[str, Field(min_length=3, max_length=254)] | None = None


class CreateProduct(Strict):
    name: Name
    category: Annotated[str, Field(min_length=1, max_length=100)]
    price: Price
    subcategory: Annotated[str, Field(max_length=100)] | None = None
    description: Annotated[str, Field(max_length=10_000)] = ""
    tags: Annotated[list[Annotated[str, Field(max_length=50)]], Field(max_length=50)] = []
    image_url: Annotated[str, Field(max_length=2048)] | None = None
    stock: Annotated[int, Field(ge=0, le=10_000_000)] = 0


class UpdateProduct(Strict):
    name: Name | None = None
    category: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    price: Price | None = None
    subcategory: Annotated[str, Field(max_length=100)] | None = None
    description: Annotated[str, Field(max_length=10_000)] | None = None
    tags: Annotated[list[Annotated[str, Field(max_length=50)]], Field(max_length=50)] | None = None
    image_url: Annotated[str, Field(max_length=2048)] | None = None
    stock: Annotated[int, Field(ge=0, le=10_000_000)] | None = None


class OrderItemIn(BaseModel):
    """A requested line. Any client-sent price is ignored: the catalogue price at order time applies."""

    model_config = ConfigDict(extra="ignore")
    product_id: Id
    quantity: Quantity


class CreateOrder(Strict):
    customer_id: Id
    items: Annotated[list[OrderItemIn], Field(min_length=1, max_length=100)]


class AddItem(Strict):
    product_id: Id
    quantity: Quantity


class CancelOrder(Strict):
    reason: Annotated[str, Field(max_length=500)] | None = None


class ShipOrder(Strict):
    tracking_number: Annotated[str, Field(max_length=100)] | None = None


class Accepted(BaseModel):
    status: str = "accepted"
    version: int
    order_id: str | None = None
    product_id: str | None = None
    customer_id: str | None = None


def _parse_if_match(value: str | None) -> int | None:
    if value is None:
        return None
    raw = value.strip().removeprefix("W/").strip('"')
    if not raw.isdigit():
        raise InvalidCommand("If-Match must be the aggregate version, e.g. \"3\"", field="If-Match")
    return int(raw)


async def command_context(
        request: Request, caller: Caller,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        if_match: Annotated[str | None, Header()] = None,
        x_correlation_id: Annotated[str | None, Header(max_length=200)] = None) -> CommandContext:
    route = request.scope.get("route")
    request_hash = None
    if idempotency_key:
        request_hash = request_fingerprint(caller.subject, request.method, request.url.path, await request.body())
    return CommandContext(command=getattr(route, "name", "unknown"), principal=caller, correlation_id=x_correlation_id,
                          idempotency_key=idempotency_key or None, request_hash=request_hash,
                          expected_version=_parse_if_match(if_match))


Ctx = Annotated[CommandContext, Depends(command_context)]


async def handlers(request: Request) -> CommandHandlers:
    return request.app.state.handlers


Handlers = Annotated[CommandHandlers, Depends(handlers)]


def respond(result: CommandResult) -> JSONResponse:
    """The command's answer; an order's also carries the consistency token a reader can pass to the query
    API to read its own write (domain/consistency.py)."""
    headers = {"ETag": f'"{result.body["version"]}"'} if "version" in result.body else {}
    if "order_id" in result.body and "version" in result.body:
        headers[consistency.HEADER] = consistency.token_for("order", result.body["order_id"], result.body["version"])
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(result.body, status_code=result.status_code, headers=headers)


def declared(description: str) -> dict:
    return {"model": ErrorBody, "description": description}


# Every status a command can answer, in the error shape (clients generated from the document handle them).
COMMAND_ERRORS = {
    400: declared("The request could not be read (e.g. a body that is not JSON)"),
    401: declared("No bearer token, or one that is malformed, expired, wrongly signed or not for this service"),
    403: declared("The token's roles do not allow this command, or the order or customer is another "
                  "customer's"),
    404: declared("The aggregate the command names, or one it refers to, does not exist"),
    409: declared("A business rule refuses the command (e.g. shipping a cancelled order)"),
    412: declared("If-Match names a version the aggregate is no longer at"),
    413: declared("The body is larger than MAX_BODY_BYTES"),
    422: declared("A field has a value no rule accepts (`field` names it), or the Idempotency-Key was "
                  "used for a different request"),
    429: {**declared("The caller made more requests than RATE_LIMIT_PER_S / RATE_LIMIT_BURST allow"),
          "headers": {"Retry-After": {"description": "Seconds until a request is admitted again",
                                      "schema": {"type": "integer"}}}},
    503: {**declared("The gateway is overloaded (`overloaded`: the command was not handled, so it is safe to "
                     "send again) or its database is unavailable; retry after Retry-After"),
          "headers": {"Retry-After": {"description": "Seconds until a retry may succeed",
                                      "schema": {"type": "integer"}}}},
}
router = APIRouter(prefix="/api", dependencies=[Depends(authenticated), Depends(rate_limited)],
                   responses=COMMAND_ERRORS)
ADMIN_ONLY = [Depends(requires(*access.CATALOGUE))]
CUSTOMER_OR_ADMIN = [Depends(requires(Role.customer, Role.admin))]
ACCEPTED = {"model": Accepted}
ORDER_ACCEPTED = {"model": Accepted, "headers": {consistency.HEADER: {
    "description": "`order:<id>@<version>`: pass it back to the query API to read this write "
                   "(read-your-writes; several joined by commas)", "schema": {"type": "string"}}}}


@router.post("/customers", name="RegisterCustomer",
             summary="Register a customer. Admins (the sign-up service).", status_code=201, responses={201: ACCEPTED},
             dependencies=[Depends(requires(*access.REGISTRATION))])
async def register_customer(body: RegisterCustomer, ctx: Ctx, h: Handlers) -> JSONResponse:
    return respond(await h.register_customer(ctx, body.name, body.email))


@router.patch("/customers/{customer_id}", name="UpdateCustomer",
              summary="Change a customer's name or email. The customer themself or an admin.",
              status_code=202, responses={202: ACCEPTED},
              dependencies=CUSTOMER_OR_ADMIN)
async def update_customer(customer_id: Id, body: UpdateCustomer, ctx: Ctx, h: Handlers) -> JSONResponse:
    access.require_customer_access(ctx.principal, customer_id)
    return respond(await h.update_customer(ctx, customer_id, body.name, body.email))


@router.post("/products", name="CreateProduct",
             summary="Add a product to the catalogue. Admins.",
             status_code=201, responses={201: ACCEPTED}, dependencies=ADMIN_ONLY)
async def create_product(body: CreateProduct, ctx: Ctx, h: Handlers) -> JSONResponse:
    return respond(await h.create_product(ctx, **body.model_dump()))


@router.patch("/products/{product_id}", name="UpdateProduct",
              summary="Change a product's price, stock or details. Admins.", status_code=202, responses={202: ACCEPTED},
              dependencies=ADMIN_ONLY)
async def update_product(product_id: Id, body: UpdateProduct, ctx: Ctx, h: Handlers) -> JSONResponse:
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise InvalidCommand("nothing to update: send at least one field", field="body")
    for required in ("name", "category", "price"):
        if required in changes and changes[required] is None:
            raise InvalidCommand(f"{required} cannot be null", field=required)
    return respond(await h.update_product(ctx, product_id, **changes))


@router.post("/orders", name="CreateOrder",
             summary="Place an order. The customer it is for, or an admin.",
             status_code=201, responses={201: ORDER_ACCEPTED},
             dependencies=CUSTOMER_OR_ADMIN)
async def create_order(body: CreateOrder, ctx: Ctx, h: Handlers) -> JSONResponse:
    access.require_customer_access(ctx.principal, body.customer_id)
    return respond(await h.create_order(ctx, body.customer_id, [(i.product_id, i.quantity) for i in body.items]))


@router.post("/orders/{order_id}/items", name="AddItem",
             summary="Add a line to a pending order. Its customer or an admin.",
             status_code=202, responses={202: ORDER_ACCEPTED},
             dependencies=CUSTOMER_OR_ADMIN)
async def add_item(order_id: Id, body: AddItem, ctx: Ctx, h: Handlers) -> JSONResponse:
    return respond(await h.add_item(ctx, order_id, body.product_id, body.quantity))


@router.delete("/orders/{order_id}/items/{product_id}", name="RemoveItem",
               summary="Remove a line from a pending order. Its customer or an admin.", status_code=202,
               responses={202: ORDER_ACCEPTED}, dependencies=CUSTOMER_OR_ADMIN)
async def remove_item(order_id: Id, product_id: Id, ctx: Ctx, h: Handlers) -> JSONResponse:
    return respond(await h.remove_item(ctx, order_id, product_id))


@router.post("/orders/{order_id}/cancel", name="CancelOrder",
             summary="Cancel a pending order. Its customer or an admin.",
             status_code=202, responses={202: ORDER_ACCEPTED},
             dependencies=CUSTOMER_OR_ADMIN)
async def cancel_order(order_id: Id, ctx: Ctx, h: Handlers, body: CancelOrder | None = None) -> JSONResponse:
    return respond(await h.cancel_order(ctx, order_id, body.reason if body else None))


@router.post("/orders/{order_id}/ship", name="ShipOrder",
             summary="Ship an order. Admins.", status_code=202, responses={202: ORDER_ACCEPTED},
             dependencies=[Depends(requires(*access.FULFILMENT))])
async def ship_order(order_id: Id, ctx: Ctx, h: Handlers, body: ShipOrder | None = None) -> JSONResponse:
    return respond(await h.ship_order(ctx, order_id, body.tracking_number if body else None))


@router.post("/orders/{order_id}/deliver", name="DeliverOrder",
             summary="Mark a shipped order delivered. Admins.", status_code=202, responses={202: ORDER_ACCEPTED},
             dependencies=[Depends(requires(*access.FULFILMENT))])
async def deliver_order(order_id: Id, ctx: Ctx, h: Handlers) -> JSONResponse:
    return respond(await h.deliver_order(ctx, order_id))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        codecs = await asyncio.to_thread(prepare_event_codecs, settings)
        pool = AsyncConnectionPool(postgres.conninfo(settings), min_size=settings.db_pool_min,
                                   max_size=settings.db_pool_max, open=False, timeout=10,
                                   kwargs={"connect_timeout": postgres.connect_timeout(settings)})
        await pool.open(wait=True, timeout=settings.connect_timeout_s * 3)
        app.state.handlers = CommandHandlers(pool, codecs, topic_prefix=settings.topic_prefix)
        relay = OutboxRelay(settings) if settings.outbox_relay_enabled else None
        relay_task = asyncio.create_task(relay.run(), name="outbox-relay") if relay else None
        app.state.relay = relay
        try:
            yield
        finally:
            if relay and relay_task:
                relay.stop()
                await asyncio.wait_for(relay_task, 15)
            await pool.close()

    app = service_app(title="CQRS command gateway", lifespan=lifespan, settings=settings,
                      latency=COMMAND_LATENCY, label="command",
                      description="Commands change the PostgreSQL write model and emit Avro events through a "
                                  "transactional outbox. Responses never wait for read models.")
    app.include_router(router)

    @app.get("/readyz", name="readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        try:
            async with request.app.state.handlers.pool.connection(timeout=2) as conn:
                await conn.execute("select 1")
        except Exception as exc:  # any failure means not ready
            return JSONResponse({"status": "unavailable", "reason": str(exc).splitlines()[0]}, status_code=503)
        relay = request.app.state.relay
        return JSONResponse({"status": "ready", "relay_leader": bool(relay and relay.is_leader)})
    return app
