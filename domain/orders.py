"""Order aggregate and its rules.

An order is priced from the catalogue at the moment of ordering (a client-sent price is never
trusted), its total is an exact Decimal sum, it never drops below the minimum total while pending,
and it reserves stock for every line; cancelling releases that stock. Status moves only
pending -> shipped -> delivered or pending -> cancelled.

Each decision returns the new order, the products whose stock changed, and the events, in the
order they must be published. Products are passed in already loaded: no I/O happens here.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum

from domain.errors import InvalidCommand, NotFound, RuleViolation
from domain.events import AggregateType, DomainEvent
from domain.money import money
from domain.products import Product, change_stock

MINIMUM_ORDER_TOTAL = Decimal("10.00")
MAX_LINES = 100
MAX_QUANTITY = 10_000


class OrderStatus(StrEnum):
    PENDING = "pending"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class OrderLine:
    product_id: str
    quantity: int
    unit_price: Decimal

    @property
    def line_total(self) -> Decimal:
        return money(self.unit_price * self.quantity)

    def as_payload(self) -> dict:
        return {"product_id": self.product_id, "quantity": self.quantity, "unit_price": self.unit_price}


@dataclass(frozen=True)
class Order:
    order_id: str
    customer_id: str
    status: OrderStatus
    lines: tuple[OrderLine, ...]
    version: int

    @property
    def total(self) -> Decimal:
        return money(sum((line.line_total for line in self.lines), Decimal(0)))

    def line(self, product_id: str) -> OrderLine | None:
        return next((ln for ln in self.lines if ln.product_id == product_id), None)


@dataclass(frozen=True)
class OrderDecision:
    order: Order
    products: tuple[Product, ...]
    events: tuple[DomainEvent, ...]


def _quantity(quantity: int, field: str) -> int:
    if quantity <= 0:
        raise InvalidCommand("quantity must be greater than 0", field=field)
    if quantity > MAX_QUANTITY:
        raise InvalidCommand(f"quantity must be at most {MAX_QUANTITY}", field=field)
    return quantity


def _product(products: Mapping[str, Product], product_id: str, field: str) -> Product:
    product = products.get(product_id)
    if product is None:
        raise NotFound(f"product {product_id} does not exist", code="product_not_found", field=field)
    return product


def _minimum_total(total: Decimal) -> None:
    if total < MINIMUM_ORDER_TOTAL:
        raise RuleViolation(f"order total {total} is below the minimum of {MINIMUM_ORDER_TOTAL}",
                            code="below_minimum_total", field="items")


def _order_event(order: Order, event_type: str, payload: dict) -> DomainEvent:
    return DomainEvent(AggregateType.ORDER, order.order_id, order.version, event_type, payload)


def merge_requested_items(items: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """Validate quantities and merge repeated products into one line, keeping first-seen order."""
    merged: dict[str, int] = {}
    for i, (product_id, quantity) in enumerate(items):
        merged[product_id] = merged.get(product_id, 0) + _quantity(quantity, f"items[{i}].quantity")
    if not merged:
        raise InvalidCommand("an order needs at least one item", field="items")
    if len(merged) > MAX_LINES:
        raise InvalidCommand(f"an order has at most {MAX_LINES} distinct products", field="items")
    for product_id, quantity in merged.items():
        _quantity(quantity, "items")
    return list(merged.items())


def create_order(order_id: str, customer_id: str, items: Iterable[tuple[str, int]], *,
                 customer_exists: bool, products: Mapping[str, Product]) -> OrderDecision:
    if not customer_exists:
        raise NotFound(f"customer {customer_id} does not exist", code="customer_not_found", field="customer_id")
    items = list(items)
    requested = merge_requested_items(items)
    first_index: dict[str, int] = {}
    for i, (product_id, _) in enumerate(items):
        first_index.setdefault(product_id, i)
    lines = []
    for product_id, quantity in requested:
        product = _product(products, product_id, f"items[{first_index[product_id]}].product_id")
        lines.append(OrderLine(product_id, quantity, product.price))
    order = Order(order_id, customer_id, OrderStatus.PENDING, tuple(lines), version=1)
    _minimum_total(order.total)
    changed, stock_events = _reserve(products, [(ln.product_id, -ln.quantity) for ln in lines], "reserved")
    created = _order_event(order, "OrderCreated", {
        "customer_id": customer_id, "items": [ln.as_payload() for ln in lines], "total": order.total,
        "status": order.status.value})
    return OrderDecision(order, changed, (created, *stock_events))


def _reserve(products: Mapping[str, Product], deltas: list[tuple[str, int]],
             reason: str) -> tuple[tuple[Product, ...], list[DomainEvent]]:
    changed, events = [], []
    for product_id, delta in deltas:
        product, event = change_stock(products[product_id], delta, reason=reason)
        changed.append(product)
        events.append(event)
    return tuple(changed), events


def _require_pending(order: Order, action: str) -> None:
    if order.status is not OrderStatus.PENDING:
        raise RuleViolation(f"cannot {action} an order that is {order.status.value}",
                            code="order_not_pending", field="status")


def add_item(order: Order, product: Product, quantity: int) -> OrderDecision:
    """Add a product (or more of one already in the order, at the line's original unit price)."""
    _require_pending(order, "add items to")
    _quantity(quantity, "quantity")
    existing = order.line(product.product_id)
    if existing is None:
        if len(order.lines) >= MAX_LINES:
            raise RuleViolation(f"an order has at most {MAX_LINES} distinct products", code="too_many_items")
        new_line = OrderLine(product.product_id, quantity, product.price)
        lines = (*order.lines, new_line)
    else:
        new_line = replace(existing, quantity=_quantity(existing.quantity + quantity, "quantity"))
        lines = tuple(new_line if ln.product_id == product.product_id else ln for ln in order.lines)
    updated = replace(order, lines=lines, version=order.version + 1)
    changed, stock_events = _reserve({product.product_id: product}, [(product.product_id, -quantity)], "reserved")
    event = _order_event(updated, "ItemAdded", {
        "product_id": product.product_id, "quantity": quantity, "unit_price": new_line.unit_price,
        "line_quantity": new_line.quantity, "total": updated.total})
    return OrderDecision(updated, changed, (event, *stock_events))


def remove_item(order: Order, product_id: str, products: Mapping[str, Product]) -> OrderDecision:
    """Remove a whole line; the order must keep at least one line and the minimum total.
    `products` needs to hold the product only when the order has that line (its stock is released)."""
    _require_pending(order, "remove items from")
    existing = order.line(product_id)
    if existing is None:
        raise NotFound(f"order {order.order_id} has no item {product_id}", code="item_not_found",
                       field="product_id")
    lines = tuple(ln for ln in order.lines if ln.product_id != product_id)
    if not lines:
        raise RuleViolation("cannot remove the last item; cancel the order instead", code="order_would_be_empty",
                            field="product_id")
    updated = replace(order, lines=lines, version=order.version + 1)
    _minimum_total(updated.total)
    changed, stock_events = _reserve(products, [(product_id, existing.quantity)], "released")
    event = _order_event(updated, "ItemRemoved", {
        "product_id": product_id, "quantity": existing.quantity, "total": updated.total})
    return OrderDecision(updated, changed, (event, *stock_events))


def cancel_order(order: Order, products: Mapping[str, Product], reason: str | None = None) -> OrderDecision:
    if order.status in (OrderStatus.SHIPPED, OrderStatus.DELIVERED):
        raise RuleViolation(f"cannot cancel an order that is {order.status.value}", code="cannot_cancel_shipped",
                            field="status")
    if order.status is OrderStatus.CANCELLED:
        raise RuleViolation("order is already cancelled", code="order_already_cancelled", field="status")
    updated = replace(order, status=OrderStatus.CANCELLED, version=order.version + 1)
    changed, stock_events = _reserve(products, [(ln.product_id, ln.quantity) for ln in order.lines], "released")
    event = _order_event(updated, "OrderCancelled", {"reason": reason, "total": updated.total})
    return OrderDecision(updated, changed, (event, *stock_events))


def ship_order(order: Order, tracking_number: str | None = None) -> OrderDecision:
    if order.status is not OrderStatus.PENDING:
        raise RuleViolation(f"cannot ship an order that is {order.status.value}", code="invalid_transition",
                            field="status")
    updated = replace(order, status=OrderStatus.SHIPPED, version=order.version + 1)
    return OrderDecision(updated, (), (_order_event(updated, "OrderShipped", {"tracking_number": tracking_number}),))


def deliver_order(order: Order) -> OrderDecision:
    if order.status is not OrderStatus.SHIPPED:
        raise RuleViolation(f"cannot deliver an order that is {order.status.value}", code="invalid_transition",
                            field="status")
    updated = replace(order, status=OrderStatus.DELIVERED, version=order.version + 1)
    return OrderDecision(updated, (), (_order_event(updated, "OrderDelivered", {}),))
