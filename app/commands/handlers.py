"""Command handlers: one transaction per command — load (locked), decide (pure domain), save, append events.

Guarantees: the aggregate change, its outbox events and the idempotency record commit together or
not at all, so an event exists iff its change committed; a failed command writes nothing.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from app.commands import store
from domain import access, customers, orders, products
from domain.access import Principal
from domain.errors import InvalidCommand, NotFound, RuleViolation, VersionConflict
from domain.events import DomainEvent
from schemas.codec import EventCodec


@dataclass(frozen=True)
class CommandContext:
    """Per-request metadata: tracing ids, the optional idempotency key and expected version (If-Match)."""

    command: str
    principal: Principal
    command_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    correlation_id: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    expected_version: int | None = None


@dataclass(frozen=True)
class CommandResult:
    status_code: int
    body: dict[str, Any]
    replayed: bool = False


Decided = tuple[CommandResult, list[DomainEvent], list[store.Write]]
"""What a command decided: the response, the events, and the writes that persist it."""


def request_fingerprint(subject: str, method: str, path: str, body: bytes) -> str:
    """Who sent what: the same Idempotency-Key from another caller is a different request (never a replay
    of someone else's answer)."""
    return hashlib.sha256(subject.encode() + b"\n" + method.encode() + b" " + path.encode() + b"\n" + body
                          ).hexdigest()


def _check_version(ctx: CommandContext, current: int, what: str) -> None:
    if ctx.expected_version is not None and ctx.expected_version != current:
        raise VersionConflict(f"{what} is at version {current}, not {ctx.expected_version}", field="If-Match")


class CommandHandlers:
    """Application service behind the HTTP gateway; stateless apart from the pool and codecs."""

    def __init__(self, pool: AsyncConnectionPool, codecs: dict[str, EventCodec],
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc), topic_prefix: str = "") -> None:
        self.pool = pool
        self.codecs = codecs
        self.topic_prefix = topic_prefix
        self.clock = clock

    def _outbox_rows(self, events: tuple[DomainEvent, ...] | list[DomainEvent], ctx: CommandContext) -> list[dict]:
        occurred_at = self.clock()
        rows = []
        for event in events:
            event_id = str(uuid.uuid4())
            topic = self.topic_prefix + event.aggregate_type.topic
            envelope = {
                "event_id": event_id, "event_type": event.event_type, "aggregate_id": event.aggregate_id,
                "sequence_number": event.sequence_number, "occurred_at": occurred_at,
                "correlation_id": ctx.correlation_id or ctx.command_id, "causation_id": ctx.command_id,
                "payload": (f"cqrs.events.{event.aggregate_type.value}.{event.event_type}", event.payload),
            }
            rows.append({
                "event_id": event_id, "topic": topic, "aggregate_type": event.aggregate_type.value,
                "aggregate_id": event.aggregate_id, "sequence_number": event.sequence_number,
                "event_type": event.event_type, "payload": self.codecs[topic].encode(envelope),
                "headers": json.dumps({"event_type": event.event_type, "event_id": event_id,
                                       "sequence_number": str(event.sequence_number)}),
            })
        return rows

    async def _execute(self, ctx: CommandContext, decide: Callable[[AsyncConnection], Awaitable[Decided]]
                       ) -> CommandResult:
        try:
            # Pipeline mode: BEGIN goes out with the first read and COMMIT with the writes, so a command
            # costs two round trips to PostgreSQL (read, then write + commit) instead of four. Errors
            # surface at those points, still inside this block.
            async with self.pool.connection() as conn, conn.pipeline():
                async with conn.transaction():
                    if ctx.idempotency_key:
                        earlier = await _claim_idempotency_key(conn, ctx)
                        if earlier is not None:
                            return earlier
                    result, events, writes = await decide(conn)
                    writes = [*writes, *store.append_outbox(self._outbox_rows(events, ctx))]
                    if ctx.idempotency_key:
                        writes.append(store.Write(
                            "update idempotency_keys set status_code = %s, response = %s where key = %s",
                            (result.status_code, Jsonb(result.body), ctx.idempotency_key)))
                    await store.execute_writes(conn, writes)
                return result
        except UniqueViolation as exc:
            # email_taken() cannot see a concurrent command's uncommitted customer; the unique index can
            if exc.diag.constraint_name == "customers_email_key":
                raise RuleViolation("email is already registered", code="duplicate_email", field="email") from exc
            raise

    # customers -------------------------------------------------------------------------------------

    async def register_customer(self, ctx: CommandContext, name: str, email: str) -> CommandResult:
        async def decide(conn: AsyncConnection):
            customer_id = str(uuid.uuid4())
            normalized = customers.normalize_email(email)
            taken = await store.email_taken(conn, normalized)
            customer, event = customers.register_customer(customer_id, name, email, email_taken=taken)
            return _accepted(201, "customer_id", customer_id, customer.version), [event], \
                store.insert_customer(customer)
        return await self._execute(ctx, decide)

    async def update_customer(self, ctx: CommandContext, customer_id: str, name: str | None,
                              email: str | None) -> CommandResult:
        async def decide(conn: AsyncConnection):
            current = await store.load_customer(conn, customer_id, lock=True)
            if current is None:
                raise NotFound(f"customer {customer_id} does not exist", code="customer_not_found")
            _check_version(ctx, current.version, f"customer {customer_id}")
            taken = False
            if email is not None:
                taken = await store.email_taken(conn, customers.normalize_email(email), other_than=customer_id)
            updated, events = customers.update_customer(current, name=name, email=email, email_taken=taken)
            return _accepted(202, "customer_id", customer_id, updated.version), events, \
                store.update_customer(updated) if events else []
        return await self._execute(ctx, decide)

    # products --------------------------------------------------------------------------------------

    async def create_product(self, ctx: CommandContext, **fields: Any) -> CommandResult:
        async def decide(conn: AsyncConnection):
            product_id = str(uuid.uuid4())
            product, event = products.create_product(product_id, **fields)
            return _accepted(201, "product_id", product_id, product.version), [event], store.insert_product(product)
        return await self._execute(ctx, decide)

    async def update_product(self, ctx: CommandContext, product_id: str, **changes: Any) -> CommandResult:
        async def decide(conn: AsyncConnection):
            current = (await store.load_products(conn, [product_id])).get(product_id)
            if current is None:
                raise NotFound(f"product {product_id} does not exist", code="product_not_found")
            _check_version(ctx, current.version, f"product {product_id}")
            updated, events = products.update_product(current, **changes)
            return _accepted(202, "product_id", product_id, updated.version), events, \
                store.save_products([updated]) if events else []
        return await self._execute(ctx, decide)

    # orders ----------------------------------------------------------------------------------------

    async def create_order(self, ctx: CommandContext, customer_id: str, items: list[tuple[str, int]]) -> CommandResult:
        async def decide(conn: AsyncConnection):
            order_id = str(uuid.uuid4())
            requested = orders.merge_requested_items(items)
            exists, loaded = await store.load_order_inputs(conn, customer_id, [pid for pid, _ in requested])
            decision = orders.create_order(order_id, customer_id, requested, customer_exists=exists,
                                           products=loaded)
            return _accepted(201, "order_id", order_id, decision.order.version, total=str(decision.order.total)), \
                list(decision.events), [*store.insert_order(decision.order), *store.save_products(decision.products)]
        return await self._execute(ctx, decide)

    async def _order_command(self, ctx: CommandContext, order_id: str,
                             decide_on: Callable[[AsyncConnection, orders.Order], Awaitable[orders.OrderDecision]],
                             *, lines_changed: bool) -> CommandResult:
        async def decide(conn: AsyncConnection):
            order = await store.load_order(conn, order_id)
            if order is None:
                raise NotFound(f"order {order_id} does not exist", code="order_not_found")
            access.require_customer_access(ctx.principal, order.customer_id)
            _check_version(ctx, order.version, f"order {order_id}")
            decision = await decide_on(conn, order)
            return _accepted(202, "order_id", order_id, decision.order.version,
                             order_status=decision.order.status.value, total=str(decision.order.total)), \
                list(decision.events), [*store.save_order(decision.order, lines_changed=lines_changed),
                                        *store.save_products(decision.products)]
        return await self._execute(ctx, decide)

    async def add_item(self, ctx: CommandContext, order_id: str, product_id: str, quantity: int) -> CommandResult:
        async def decide_on(conn: AsyncConnection, order: orders.Order) -> orders.OrderDecision:
            product = (await store.load_products(conn, [product_id])).get(product_id)
            if product is None:
                raise NotFound(f"product {product_id} does not exist", code="product_not_found", field="product_id")
            return orders.add_item(order, product, quantity)
        return await self._order_command(ctx, order_id, decide_on, lines_changed=True)

    async def remove_item(self, ctx: CommandContext, order_id: str, product_id: str) -> CommandResult:
        async def decide_on(conn: AsyncConnection, order: orders.Order) -> orders.OrderDecision:
            loaded = await store.load_products(conn, [product_id]) if order.line(product_id) else {}
            return orders.remove_item(order, product_id, loaded)
        return await self._order_command(ctx, order_id, decide_on, lines_changed=True)

    async def cancel_order(self, ctx: CommandContext, order_id: str, reason: str | None) -> CommandResult:
        async def decide_on(conn: AsyncConnection, order: orders.Order) -> orders.OrderDecision:
            loaded = await store.load_products(conn, [ln.product_id for ln in order.lines]) \
                if order.status is orders.OrderStatus.PENDING else {}
            return orders.cancel_order(order, loaded, reason)
        return await self._order_command(ctx, order_id, decide_on, lines_changed=False)

    async def ship_order(self, ctx: CommandContext, order_id: str, tracking_number: str | None) -> CommandResult:
        async def decide_on(conn: AsyncConnection, order: orders.Order) -> orders.OrderDecision:
            return orders.ship_order(order, tracking_number)
        return await self._order_command(ctx, order_id, decide_on, lines_changed=False)

    async def deliver_order(self, ctx: CommandContext, order_id: str) -> CommandResult:
        async def decide_on(conn: AsyncConnection, order: orders.Order) -> orders.OrderDecision:
            return orders.deliver_order(order)
        return await self._order_command(ctx, order_id, decide_on, lines_changed=False)


def _accepted(status_code: int, id_field: str, aggregate_id: str, version: int, **extra: Any) -> CommandResult:
    return CommandResult(status_code, {id_field: aggregate_id, "status": "accepted", "version": version, **extra})


async def _claim_idempotency_key(conn: AsyncConnection, ctx: CommandContext) -> CommandResult | None:
    """Claim the key inside the command's transaction; a concurrent duplicate waits on the row, then
    replays the stored response. The same key with a different request is refused."""
    # RETURNING + fetch, not rowcount: in pipeline mode rowcount is unknown (-1) until results are read
    cur = await conn.execute(
        "insert into idempotency_keys (key, request_hash, status_code, response) values (%s, %s, 0, '{}') "
        "on conflict (key) do nothing returning key", (ctx.idempotency_key, ctx.request_hash))
    if await cur.fetchone() is not None:
        return None
    row = await (await conn.execute("select request_hash, status_code, response from idempotency_keys "
                                    "where key = %s", (ctx.idempotency_key,))).fetchone()
    if row[0] != ctx.request_hash:
        raise InvalidCommand("Idempotency-Key was already used for a different request",
                             code="idempotency_key_reused", field="Idempotency-Key")
    return CommandResult(row[1], row[2], replayed=True)
