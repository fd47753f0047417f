from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from domain.errors import InvalidCommand, NotFound, RuleViolation
from domain.events import AggregateType, DomainEvent
from domain.orders import (
    MAX_LINES,
    MAX_QUANTITY,
    MINIMUM_ORDER_TOTAL,
    Order,
    OrderDecision,
    OrderLine,
    OrderStatus,
    add_item,
    cancel_order,
    create_order,
    deliver_order,
    merge_requested_items,
    remove_item,
    ship_order,
)
from domain.products import Product, create_product, update_product
from tests.unit.domain.helpers import assert_cents, expect_error

ORDER, PRODUCT = AggregateType.ORDER, AggregateType.PRODUCT


def make_product(product_id: str, price: str, stock: int = 100) -> Product:
    product, _ = create_product(product_id, name=f"Product {product_id}", category="test", price=Decimal(price),
                                stock=stock)
    return product


def catalog(*specs: tuple) -> dict[str, Product]:
    """specs: (product_id, price[, stock])"""
    return {spec[0]: make_product(*spec) for spec in specs}


def order_of(items, products, *, customer_exists: bool = True) -> OrderDecision:
    return create_order("o-1", "c-1", items, customer_exists=customer_exists, products=products)


def apply(products: dict[str, Product], decision: OrderDecision) -> dict[str, Product]:
    return {**products, **{p.product_id: p for p in decision.products}}


def stock_changed(product_id: str, seq: int, stock: int, delta: int, reason: str) -> DomainEvent:
    return DomainEvent(PRODUCT, product_id, seq, "StockChanged", {"stock": stock, "delta": delta, "reason": reason})


@pytest.fixture
def placed():
    """A pending order: p-a 1 x 10.00 + p-b 2 x 5.00 = 20.00; stock 10 each before, 9 and 8 after."""
    products = catalog(("p-a", "10.00", 10), ("p-b", "5.00", 10), ("p-c", "2.50", 10))
    decision = order_of([("p-a", 1), ("p-b", 2)], products)
    return decision.order, apply(products, decision)


def in_status(order: Order, products: dict[str, Product], status: OrderStatus) -> Order:
    if status is OrderStatus.PENDING:
        return order
    if status is OrderStatus.CANCELLED:
        return cancel_order(order, products).order
    shipped = ship_order(order).order
    return shipped if status is OrderStatus.SHIPPED else deliver_order(shipped).order


# --- create_order -----------------------------------------------------------------------------------------------

def test_create_order_returns_pending_version_1_order_priced_from_the_catalogue():
    products = catalog(("p-a", "2.50", 10), ("p-b", "0.10", 50))
    decision = order_of([("p-a", 3), ("p-b", 30)], products)
    assert decision.order == Order("o-1", "c-1", OrderStatus.PENDING,
                                   (OrderLine("p-a", 3, Decimal("2.50")), OrderLine("p-b", 30, Decimal("0.10"))),
                                   version=1)
    assert_cents(decision.order.total, "10.50")


def test_create_order_events_are_order_created_then_stock_changes_in_line_order():
    products = catalog(("p-a", "2.50", 10), ("p-b", "0.10", 50))
    decision = order_of([("p-a", 3), ("p-b", 30)], products)
    assert decision.events == (
        DomainEvent(ORDER, "o-1", 1, "OrderCreated", {
            "customer_id": "c-1",
            "items": [{"product_id": "p-a", "quantity": 3, "unit_price": Decimal("2.50")},
                      {"product_id": "p-b", "quantity": 30, "unit_price": Decimal("0.10")}],
            "total": Decimal("10.50"),
            "status": "pending"}),
        stock_changed("p-a", 2, 7, -3, "reserved"),
        stock_changed("p-b", 2, 20, -30, "reserved"),
    )
    assert_cents(decision.events[0].payload["total"], "10.50")


def test_create_order_returns_reserved_products_in_line_order_and_leaves_inputs_untouched():
    products = catalog(("p-b", "0.10", 50), ("p-a", "2.50", 10))
    decision = order_of([("p-a", 3), ("p-b", 30)], products)
    assert decision.products == (dataclasses.replace(products["p-a"], stock=7, version=2),
                                 dataclasses.replace(products["p-b"], stock=20, version=2))
    assert (products["p-a"].stock, products["p-a"].version) == (10, 1)
    assert (products["p-b"].stock, products["p-b"].version) == (50, 1)


def test_stock_changed_sequence_follows_each_products_own_version():
    products = catalog(("p-a", "5.00"), ("p-b", "5.00"))
    products["p-a"] = dataclasses.replace(products["p-a"], version=7)
    decision = order_of([("p-b", 1), ("p-a", 1)], products)
    assert [(e.aggregate_type, e.aggregate_id, e.sequence_number) for e in decision.events] == [
        (ORDER, "o-1", 1), (PRODUCT, "p-b", 2), (PRODUCT, "p-a", 8)]
    assert [p.version for p in decision.products] == [2, 8]


def test_unit_price_comes_from_the_product():
    products = catalog(("p-a", "12.34"))
    line = order_of([("p-a", 1)], products).order.lines[0]
    assert line.unit_price == products["p-a"].price
    assert_cents(line.unit_price, "12.34")


@pytest.mark.parametrize(("specs", "items", "expected"), [
    ([("a", "0.10"), ("b", "0.20"), ("c", "9.50")], [("a", 3), ("b", 1), ("c", 1)], "10.00"),
    ([("a", "0.10"), ("b", "0.20"), ("c", "9.70")], [("a", 1), ("b", 1), ("c", 1)], "10.00"),
    ([("a", "0.10")], [("a", 100)], "10.00"),
    ([("a", "3.33"), ("b", "0.01")], [("a", 3), ("b", 1)], "10.00"),
    ([("a", "0.01"), ("b", "0.01")], [("a", 999), ("b", 1)], "10.00"),
    ([("a", "1.43")], [("a", 7)], "10.01"),
    ([("a", "19.99")], [("a", 3)], "59.97"),
    ([("a", "1.10"), ("b", "2.20")], [("a", 4), ("b", 4)], "13.20"),
    ([("a", "0.07"), ("b", "0.03"), ("c", "9.99")], [("a", 3), ("b", 3), ("c", 1)], "10.29"),
    ([("a", "9999.99")], [("a", MAX_QUANTITY)], "99999900.00"),
    ([("a", "9999999999.99")], [("a", 9999)], "99989999999900.01"),  # a float product would lose the cent
    ([("a", "9999999999.99"), ("b", "0.01")], [("a", 3), ("b", 1)], "29999999999.98"),
])
def test_total_is_the_exact_sum_of_quantity_times_unit_price(specs, items, expected):
    products = catalog(*[(pid, price, MAX_QUANTITY) for pid, price in specs])
    decision = order_of(items, products)
    assert_cents(decision.order.total, expected)
    assert_cents(decision.events[0].payload["total"], expected)
    assert decision.order.total == sum((ln.unit_price * ln.quantity for ln in decision.order.lines), Decimal(0))


def test_line_total_and_lookup():
    order = order_of([("p-a", 3)], catalog(("p-a", "3.35"))).order
    assert_cents(order.lines[0].line_total, "10.05")
    assert order.line("p-a") == OrderLine("p-a", 3, Decimal("3.35"))
    assert order.line("p-z") is None


@pytest.mark.parametrize(("specs", "items", "total"), [
    ([("a", "9.99")], [("a", 1)], "9.99"),
    ([("a", "3.33")], [("a", 3)], "9.99"),
    ([("a", "0.01")], [("a", 999)], "9.99"),
    ([("a", "0.10"), ("b", "0.20"), ("c", "9.40")], [("a", 3), ("b", 1), ("c", 1)], "9.90"),
    ([("a", "0.01")], [("a", 1)], "0.01"),
])
def test_total_below_minimum_is_rejected(specs, items, total):
    with expect_error(RuleViolation, "below_minimum_total", "items") as info:
        order_of(items, catalog(*specs))
    assert f"order total {total} is below the minimum of 10.00" in info.value.message


def test_minimum_total_is_ten_and_exactly_ten_is_accepted():
    assert MINIMUM_ORDER_TOTAL == Decimal("10.00")
    assert_cents(order_of([("a", 1)], catalog(("a", "10.00"))).order.total, "10.00")


@pytest.mark.parametrize("items", [[], (), iter([])])
def test_order_needs_at_least_one_item(items):
    with expect_error(InvalidCommand, "validation_error", "items"):
        order_of(items, catalog(("a", "10.00")))


@pytest.mark.parametrize(("items", "field"), [
    ([("a", 0)], "items[0].quantity"),
    ([("a", -1)], "items[0].quantity"),
    ([("a", 1), ("b", 0)], "items[1].quantity"),
    ([("a", 1), ("b", 1), ("a", -3)], "items[2].quantity"),
    ([("a", MAX_QUANTITY + 1)], "items[0].quantity"),
    ([("a", MAX_QUANTITY), ("a", 1)], "items"),  # each line is fine, the merged line is not
])
def test_quantity_must_be_positive_and_at_most_the_maximum(items, field):
    with expect_error(InvalidCommand, "validation_error", field):
        order_of(items, catalog(("a", "10.00", 2 * MAX_QUANTITY), ("b", "10.00")))


def test_maximum_quantity_is_accepted():
    decision = order_of([("a", MAX_QUANTITY)], catalog(("a", "0.01", MAX_QUANTITY)))
    assert decision.order.lines == (OrderLine("a", MAX_QUANTITY, Decimal("0.01")),)
    assert_cents(decision.order.total, "100.00")
    assert decision.products[0].stock == 0


def test_distinct_product_limit():
    products = catalog(*[(f"p{i}", "1.00") for i in range(MAX_LINES + 1)])
    assert len(order_of([(f"p{i}", 1) for i in range(MAX_LINES)], products).order.lines) == MAX_LINES
    with expect_error(InvalidCommand, "validation_error", "items"):
        order_of([(f"p{i}", 1) for i in range(MAX_LINES + 1)], products)


@pytest.mark.parametrize(("items", "field"), [
    ([("ghost", 1)], "items[0].product_id"),
    ([("a", 1), ("ghost", 1)], "items[1].product_id"),
    ([("ghost", 1), ("a", 1)], "items[0].product_id"),
    # the index points at the request, not at the merged lines
    ([("a", 1), ("a", 1), ("ghost", 1)], "items[2].product_id"),
    ([("a", 1), ("ghost", 1), ("a", 2), ("ghost", 1)], "items[1].product_id"),
])
def test_unknown_product_is_not_found_with_the_request_index(items, field):
    with expect_error(NotFound, "product_not_found", field) as info:
        order_of(items, catalog(("a", "10.00")))
    assert "ghost" in info.value.message


def test_unknown_customer_is_not_found():
    with expect_error(NotFound, "customer_not_found", "customer_id") as info:
        order_of([("a", 1)], catalog(("a", "10.00")), customer_exists=False)
    assert "c-1" in info.value.message


def test_repeated_products_merge_into_one_line_in_first_seen_order():
    products = catalog(("a", "2.00", 10), ("b", "3.00", 10))
    decision = order_of([("a", 2), ("b", 1), ("a", 3)], products)
    assert decision.order.lines == (OrderLine("a", 5, Decimal("2.00")), OrderLine("b", 1, Decimal("3.00")))
    assert_cents(decision.order.total, "13.00")
    assert decision.events[0].payload["items"] == [
        {"product_id": "a", "quantity": 5, "unit_price": Decimal("2.00")},
        {"product_id": "b", "quantity": 1, "unit_price": Decimal("3.00")}]
    assert decision.events[1:] == (stock_changed("a", 2, 5, -5, "reserved"), stock_changed("b", 2, 9, -1, "reserved"))


def test_merge_requested_items():
    assert merge_requested_items([("a", 1), ("b", 2), ("a", 3), ("c", 1), ("b", 1)]) == [("a", 4), ("b", 3), ("c", 1)]


def test_stock_may_be_reserved_down_to_zero():
    decision = order_of([("a", 4)], catalog(("a", "2.50", 4)))
    assert decision.products[0].stock == 0
    assert decision.events[1] == stock_changed("a", 2, 0, -4, "reserved")


@pytest.mark.parametrize(("items", "product_id"), [
    ([("a", 3)], "a"),
    ([("a", 1), ("b", 6)], "b"),     # first line fits, the second does not: nothing is reserved
    ([("a", 1), ("a", 2)], "a"),     # each request fits, the merged line does not
])
def test_insufficient_stock_rejects_the_whole_order(items, product_id):
    products = catalog(("a", "10.00", 2), ("b", "10.00", 5))
    before = dict(products)
    with expect_error(RuleViolation, "insufficient_stock", "items") as info:
        order_of(items, products)
    assert f"product {product_id}" in info.value.message
    assert products == before


def test_create_order_check_precedence():
    # customer first, then items, then products, then the minimum total, then stock
    products = catalog(("a", "1.00", 0))
    with expect_error(NotFound, "customer_not_found", "customer_id"):
        order_of([], products, customer_exists=False)
    with expect_error(InvalidCommand, "validation_error", "items[1].quantity"):
        order_of([("ghost", 1), ("a", 0)], products)
    with expect_error(NotFound, "product_not_found", "items[0].product_id"):
        order_of([("ghost", 1), ("a", 1)], products)
    with expect_error(RuleViolation, "below_minimum_total", "items"):
        order_of([("a", 1)], products)


# --- add_item ---------------------------------------------------------------------------------------------------

def test_add_new_item(placed):
    order, products = placed
    decision = add_item(order, products["p-c"], 2)
    assert decision.order == dataclasses.replace(order, lines=(*order.lines, OrderLine("p-c", 2, Decimal("2.50"))),
                                                 version=2)
    assert_cents(decision.order.total, "25.00")
    assert decision.events == (
        DomainEvent(ORDER, "o-1", 2, "ItemAdded", {"product_id": "p-c", "quantity": 2, "unit_price": Decimal("2.50"),
                                                   "line_quantity": 2, "total": Decimal("25.00")}),
        stock_changed("p-c", 2, 8, -2, "reserved"),
    )
    assert decision.products == (dataclasses.replace(products["p-c"], stock=8, version=2),)
    assert order.version == 1 and len(order.lines) == 2  # the input is untouched


def test_add_existing_item_keeps_the_original_unit_price(placed):
    order, products = placed
    repriced, price_events = update_product(products["p-a"], price=Decimal("12.00"))
    assert (repriced.version, price_events[0].sequence_number) == (3, 3)
    decision = add_item(order, repriced, 2)
    assert decision.order.lines == (OrderLine("p-a", 3, Decimal("10.00")), OrderLine("p-b", 2, Decimal("5.00")))
    assert_cents(decision.order.total, "40.00")
    assert decision.events == (
        DomainEvent(ORDER, "o-1", 2, "ItemAdded", {"product_id": "p-a", "quantity": 2, "unit_price": Decimal("10.00"),
                                                   "line_quantity": 3, "total": Decimal("40.00")}),
        stock_changed("p-a", 4, 7, -2, "reserved"),
    )


def test_add_new_item_uses_the_current_catalogue_price(placed):
    order, products = placed
    repriced, _ = update_product(products["p-c"], price=Decimal("3.10"))
    decision = add_item(order, repriced, 1)
    assert decision.order.line("p-c") == OrderLine("p-c", 1, Decimal("3.10"))
    assert_cents(decision.order.total, "23.10")


@pytest.mark.parametrize("quantity", [0, -1, MAX_QUANTITY + 1])
def test_add_item_quantity_bounds(placed, quantity):
    order, products = placed
    with expect_error(InvalidCommand, "validation_error", "quantity"):
        add_item(order, products["p-c"], quantity)


def test_add_existing_item_may_not_push_the_line_over_the_maximum(placed):
    order, products = placed
    big = dataclasses.replace(products["p-a"], stock=2 * MAX_QUANTITY)
    assert add_item(order, big, MAX_QUANTITY - 1).order.line("p-a").quantity == MAX_QUANTITY
    with expect_error(InvalidCommand, "validation_error", "quantity"):
        add_item(order, big, MAX_QUANTITY)


def test_add_item_insufficient_stock(placed):
    order, products = placed
    assert add_item(order, products["p-c"], 10).products[0].stock == 0
    with expect_error(RuleViolation, "insufficient_stock", "items"):
        add_item(order, products["p-c"], 11)
    with expect_error(RuleViolation, "insufficient_stock", "items"):
        add_item(order, products["p-a"], 10)  # 9 left after the order reserved 1


def test_add_item_distinct_product_limit():
    products = catalog(*[(f"p{i}", "1.00") for i in range(MAX_LINES + 1)])
    order = order_of([(f"p{i}", 1) for i in range(MAX_LINES)], products).order
    with expect_error(RuleViolation, "too_many_items", None):
        add_item(order, products[f"p{MAX_LINES}"], 1)
    assert add_item(order, products["p0"], 1).order.line("p0").quantity == 2


@pytest.mark.parametrize("status", [OrderStatus.SHIPPED, OrderStatus.DELIVERED, OrderStatus.CANCELLED])
def test_add_item_only_while_pending(placed, status):
    order, products = placed
    with expect_error(RuleViolation, "order_not_pending", "status") as info:
        add_item(in_status(order, products, status), products["p-c"], 1)
    assert status.value in info.value.message


# --- remove_item ------------------------------------------------------------------------------------------------

def test_remove_item_releases_its_stock(placed):
    order, products = placed
    decision = remove_item(order, "p-b", products)
    assert decision.order == dataclasses.replace(order, lines=(OrderLine("p-a", 1, Decimal("10.00")),), version=2)
    assert_cents(decision.order.total, "10.00")
    assert decision.events == (
        DomainEvent(ORDER, "o-1", 2, "ItemRemoved", {"product_id": "p-b", "quantity": 2, "total": Decimal("10.00")}),
        stock_changed("p-b", 3, 10, 2, "released"),
    )
    assert decision.products == (dataclasses.replace(products["p-b"], stock=10, version=3),)


@pytest.mark.parametrize("product_id", ["p-c", "ghost"])
def test_remove_unknown_item(placed, product_id):
    order, products = placed
    with expect_error(NotFound, "item_not_found", "product_id"):
        remove_item(order, product_id, products)
    with expect_error(NotFound, "item_not_found", "product_id"):
        remove_item(order, product_id, {})  # the catalogue is not consulted for a line the order lacks


def test_removing_the_last_line_is_rejected():
    products = catalog(("a", "10.00"))
    order = order_of([("a", 2)], products).order
    with expect_error(RuleViolation, "order_would_be_empty", "product_id"):
        remove_item(order, "a", products)


def test_removal_below_minimum_total_is_rejected():
    products = catalog(("a", "9.99"), ("b", "1.00"))
    order = order_of([("a", 1), ("b", 1)], products).order
    with expect_error(RuleViolation, "below_minimum_total", "items"):
        remove_item(order, "b", products)


@pytest.mark.parametrize("status", [OrderStatus.SHIPPED, OrderStatus.DELIVERED, OrderStatus.CANCELLED])
def test_remove_item_only_while_pending(placed, status):
    order, products = placed
    with expect_error(RuleViolation, "order_not_pending", "status"):
        remove_item(in_status(order, products, status), "p-b", products)


# --- cancel / ship / deliver ------------------------------------------------------------------------------------

def test_cancel_pending_order_releases_all_stock_in_line_order(placed):
    order, products = placed
    decision = cancel_order(order, products, reason="changed my mind")
    assert decision.order == dataclasses.replace(order, status=OrderStatus.CANCELLED, version=2)
    assert decision.events == (
        DomainEvent(ORDER, "o-1", 2, "OrderCancelled", {"reason": "changed my mind", "total": Decimal("20.00")}),
        stock_changed("p-a", 3, 10, 1, "released"),
        stock_changed("p-b", 3, 10, 2, "released"),
    )
    assert [(p.product_id, p.stock, p.version) for p in decision.products] == [("p-a", 10, 3), ("p-b", 10, 3)]


def test_cancel_reason_defaults_to_none(placed):
    order, products = placed
    assert cancel_order(order, products).events[0].payload == {"reason": None, "total": Decimal("20.00")}


@pytest.mark.parametrize("status", [OrderStatus.SHIPPED, OrderStatus.DELIVERED])
def test_cannot_cancel_shipped_or_delivered(placed, status):
    order, products = placed
    with expect_error(RuleViolation, "cannot_cancel_shipped", "status"):
        cancel_order(in_status(order, products, status), products)


def test_cannot_cancel_twice(placed):
    order, products = placed
    cancelled = cancel_order(order, products).order
    with expect_error(RuleViolation, "order_already_cancelled", "status"):
        cancel_order(cancelled, products)


def test_ship_pending_order(placed):
    order, _ = placed
    decision = ship_order(order, tracking_number="TRACK-1")
    assert decision == OrderDecision(dataclasses.replace(order, status=OrderStatus.SHIPPED, version=2), (),
                                     (DomainEvent(ORDER, "o-1", 2, "OrderShipped", {"tracking_number": "TRACK-1"}),))
    assert ship_order(order).events[0].payload == {"tracking_number": None}


def test_deliver_shipped_order(placed):
    order, _ = placed
    shipped = ship_order(order).order
    decision = deliver_order(shipped)
    assert decision == OrderDecision(dataclasses.replace(order, status=OrderStatus.DELIVERED, version=3), (),
                                     (DomainEvent(ORDER, "o-1", 3, "OrderDelivered", {}),))


@pytest.mark.parametrize("status", [OrderStatus.SHIPPED, OrderStatus.DELIVERED, OrderStatus.CANCELLED])
def test_only_pending_orders_ship(placed, status):
    order, products = placed
    with expect_error(RuleViolation, "invalid_transition", "status"):
        ship_order(in_status(order, products, status))


@pytest.mark.parametrize("status", [OrderStatus.PENDING, OrderStatus.DELIVERED, OrderStatus.CANCELLED])
def test_only_shipped_orders_deliver(placed, status):
    order, products = placed
    with expect_error(RuleViolation, "invalid_transition", "status"):
        deliver_order(in_status(order, products, status))


# --- sequences --------------------------------------------------------------------------------------------------

def test_order_and_product_sequences_are_gapless_across_a_lifecycle():
    products, product_stream = {}, []
    for pid, price in (("a", "4.00"), ("b", "3.00"), ("c", "1.50")):
        products[pid], created = create_product(pid, name=pid, category="test", price=Decimal(price), stock=20)
        product_stream.append(created)
    order_stream = []

    def record(decision: OrderDecision) -> Order:
        nonlocal products
        order_events = [e for e in decision.events if e.aggregate_type is ORDER]
        assert len(order_events) == 1 and decision.events[0] is order_events[0]
        assert order_events[0].sequence_number == decision.order.version
        assert all(e.aggregate_id == decision.order.order_id for e in order_events)
        order_stream.extend(order_events)
        product_stream.extend(decision.events[1:])
        products = apply(products, decision)
        return decision.order

    order = record(create_order("o-9", "c-1", [("a", 2), ("b", 1)], customer_exists=True, products=products))
    assert_cents(order.total, "11.00")
    order = record(add_item(order, products["c"], 2))
    order = record(add_item(order, products["a"], 1))
    order = record(remove_item(order, "b", products))
    assert_cents(order.total, "15.00")
    order = record(ship_order(order, "T"))
    order = record(deliver_order(order))

    assert [(e.event_type, e.sequence_number) for e in order_stream] == [
        ("OrderCreated", 1), ("ItemAdded", 2), ("ItemAdded", 3), ("ItemRemoved", 4), ("OrderShipped", 5),
        ("OrderDelivered", 6)]
    assert order.version == 6 and order.status is OrderStatus.DELIVERED
    per_product = {pid: [(e.event_type, e.sequence_number, e.payload.get("stock")) for e in product_stream
                         if e.aggregate_id == pid] for pid in products}
    assert per_product == {
        "a": [("ProductCreated", 1, 20), ("StockChanged", 2, 18), ("StockChanged", 3, 17)],
        "b": [("ProductCreated", 1, 20), ("StockChanged", 2, 19), ("StockChanged", 3, 20)],
        "c": [("ProductCreated", 1, 20), ("StockChanged", 2, 18)],
    }
    assert {pid: (p.stock, p.version) for pid, p in products.items()} == {"a": (17, 3), "b": (20, 3), "c": (18, 2)}


def test_create_then_cancel_restores_stock_with_consecutive_versions():
    products = catalog(("a", "6.00", 5), ("b", "7.00", 5))
    created = order_of([("a", 2), ("b", 3)], products)
    products = apply(products, created)
    cancelled = cancel_order(created.order, products)
    assert [e.sequence_number for e in (*created.events, *cancelled.events) if e.aggregate_type is ORDER] == [1, 2]
    assert [(e.aggregate_id, e.sequence_number, e.payload["delta"])
            for e in (*created.events, *cancelled.events) if e.aggregate_type is PRODUCT] == [
        ("a", 2, -2), ("b", 2, -3), ("a", 3, 2), ("b", 3, 3)]
    assert {p.product_id: p.stock for p in cancelled.products} == {"a": 5, "b": 5}


def test_order_is_immutable(placed):
    order, _ = placed
    with pytest.raises(dataclasses.FrozenInstanceError):
        order.status = OrderStatus.SHIPPED  # type: ignore[misc]
