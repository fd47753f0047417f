"""Pure read-model builders: order views, customer history entries, product documents and sales figures."""
from __future__ import annotations

import copy
import random
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from domain.read_models import PRODUCTS_MAPPING
from domain.errors import DomainError
from domain.events import AggregateType, DomainEvent
from domain.orders import (
    Order,
    OrderDecision,
    OrderStatus,
    add_item,
    cancel_order,
    create_order,
    deliver_order,
    remove_item,
    ship_order,
)
from domain.products import Product, create_product, update_product
from domain.views import (
    OrderFacts,
    ReferenceData,
    apply_order_event,
    apply_order_facts,
    apply_product_event,
    money_str,
    order_summary,
    sales_contributions,
    search_document_changed,
)

COPIED_BY_SALES = {"sales_version", "purchase_count_version"}   # written only with the sales projection's purchase-count copies

T0 = datetime(2024, 3, 9, 22, 15, 0, tzinfo=timezone.utc)

REFS = ReferenceData(
    products={"p-a": {"name": "Alpha", "image_url": "https://img.example/a.png"},
              "p-b": {"name": "Beta", "image_url": None},
              "p-c": {"name": "Gamma", "image_url": "https://img.example/c.png"}},
    customers={"c-1": {"name": "Ada Lovelace", "email": "ada@example.com"}},
)


def envelope(event: DomainEvent, at: datetime) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "event_type": event.event_type, "aggregate_id": event.aggregate_id,
            "sequence_number": event.sequence_number, "occurred_at": at, "payload": event.payload}


def raw(kind: str, seq: int, payload: dict, *, agg: str = "o-1", at: datetime = T0) -> dict[str, Any]:
    return {"event_id": f"e-{agg}-{seq}", "event_type": kind, "aggregate_id": agg, "sequence_number": seq,
            "occurred_at": at, "payload": payload}


def make_product(product_id: str, price: str, stock: int = 1000) -> Product:
    product, _ = create_product(product_id, name=f"Product {product_id}", category="test", price=Decimal(price),
                                stock=stock)
    return product


def catalog(*specs: tuple[str, str]) -> dict[str, Product]:
    return {pid: make_product(pid, price) for pid, price in specs}


def with_changes(products: dict[str, Product], decision: OrderDecision) -> dict[str, Product]:
    return {**products, **{p.product_id: p for p in decision.products}}


def order_events(decision: OrderDecision) -> list[DomainEvent]:
    return [e for e in decision.events if e.aggregate_type is AggregateType.ORDER]


def fold(events, refs: ReferenceData = REFS, view: dict | None = None) -> dict | None:
    for event in events:
        view = apply_order_event(view, event, refs)
    return view


def fold_facts(events, facts: OrderFacts | None = None) -> OrderFacts | None:
    for event in events:
        facts = apply_order_facts(facts, event)
    return facts


class Script:
    """Drives the order aggregate and records its events as envelopes, one minute apart."""

    def __init__(self, products: dict[str, Product], start: datetime = T0) -> None:
        self.products = products
        self.at = start
        self.events: list[dict[str, Any]] = []
        self.order: Order | None = None

    def run(self, decision: OrderDecision) -> Order:
        self.products = with_changes(self.products, decision)
        for event in order_events(decision):
            self.events.append(envelope(event, self.at))
            self.at += timedelta(minutes=1)
        self.order = decision.order
        return decision.order

    def create(self, items, order_id: str = "o-1", customer_id: str = "c-1") -> Order:
        return self.run(create_order(order_id, customer_id, items, customer_exists=True, products=self.products))

    def add(self, product_id: str, quantity: int) -> Order:
        return self.run(add_item(self.order, self.products[product_id], quantity))

    def remove(self, product_id: str) -> Order:
        return self.run(remove_item(self.order, product_id, self.products))

    def cancel(self, reason: str | None = None) -> Order:
        return self.run(cancel_order(self.order, self.products, reason))

    def ship(self, tracking: str | None = None) -> Order:
        return self.run(ship_order(self.order, tracking))

    def deliver(self) -> Order:
        return self.run(deliver_order(self.order))


@pytest.fixture
def script() -> Script:
    """p-a 79.99, p-b 5.00, p-c 0.35 (p-c has no reference data under that id in some tests)."""
    return Script(catalog(("p-a", "79.99"), ("p-b", "5.00"), ("p-c", "0.35"), ("p-x", "12.50")))


# --- order view: OrderCreated --------------------------------------------------------------------------------------

def test_created_view_is_enriched_from_reference_data_with_exact_money_strings(script):
    script.create([("p-a", 2), ("p-b", 1)])
    view = fold(script.events)
    assert view == {
        "_id": "o-1", "order_id": "o-1", "customer_id": "c-1", "customer_name": "Ada Lovelace",
        "customer_email": "ada@example.com",
        "items": [{"product_id": "p-a", "product_name": "Alpha", "product_image": "https://img.example/a.png",
                   "quantity": 2, "unit_price": "79.99"},
                  {"product_id": "p-b", "product_name": "Beta", "product_image": None,
                   "quantity": 1, "unit_price": "5.00"}],
        "total": "164.98", "status": "pending", "created_at": T0, "updated_at": T0, "last_seq": 1}


def test_total_string_is_exact_two_places(script):
    script.create([("p-a", 2)])
    assert fold(script.events)["total"] == "159.98"


def test_missing_product_and_customer_references_give_none_names(script):
    script.create([("p-x", 1)], customer_id="c-unknown")
    view = fold(script.events)
    assert view["customer_id"] == "c-unknown"
    assert view["customer_name"] is None and view["customer_email"] is None
    assert view["items"] == [{"product_id": "p-x", "product_name": None, "product_image": None, "quantity": 1,
                              "unit_price": "12.50"}]


def test_empty_reference_data_still_builds_the_view(script):
    script.create([("p-a", 1)])
    view = fold(script.events, ReferenceData())
    assert view["customer_name"] is None and view["items"][0]["product_name"] is None
    assert view["total"] == "79.99"


def test_created_over_an_existing_view_starts_afresh(script):
    script.create([("p-a", 1)])
    script.add("p-b", 3)
    stale = fold(script.events)
    view = apply_order_event(stale, script.events[0], REFS)
    assert view == fold(script.events[:1])


def test_order_event_view_shape_matches_the_documented_read_model(script):
    script.create([("p-a", 1)])
    script.ship("TRK-1")
    view = fold(script.events)
    assert set(view) == {"_id", "order_id", "customer_id", "customer_name", "customer_email", "items", "total",
                         "status", "tracking_number", "created_at", "updated_at", "last_seq"}
    assert set(view["items"][0]) == {"product_id", "product_name", "product_image", "quantity", "unit_price"}


# --- order view: later events --------------------------------------------------------------------------------------

def test_item_added_for_a_new_product_appends_an_enriched_line(script):
    script.create([("p-a", 1)])
    script.add("p-c", 4)
    view = fold(script.events)
    assert [i["product_id"] for i in view["items"]] == ["p-a", "p-c"]
    assert view["items"][1] == {"product_id": "p-c", "product_name": "Gamma",
                                "product_image": "https://img.example/c.png", "quantity": 4, "unit_price": "0.35"}
    assert view["total"] == "81.39"
    assert view["last_seq"] == 2
    assert view["updated_at"] == T0 + timedelta(minutes=1)
    assert view["created_at"] == T0


def test_item_added_for_an_existing_product_sets_the_line_quantity_and_keeps_the_price(script):
    script.create([("p-a", 1), ("p-b", 2)])
    script.products["p-b"] = update_product(script.products["p-b"], price=Decimal("6.00"))[0]
    script.add("p-b", 3)
    view = fold(script.events)
    assert len(view["items"]) == 2
    assert view["items"][1] == {"product_id": "p-b", "product_name": "Beta", "product_image": None,
                                "quantity": 5, "unit_price": "5.00"}
    assert view["total"] == "104.99"


def test_item_added_uses_line_quantity_not_delta():
    created = raw("OrderCreated", 1, {"customer_id": "c-1", "status": "pending", "total": Decimal("10.00"),
                                      "items": [{"product_id": "p-b", "quantity": 2, "unit_price": Decimal("5.00")}]})
    added = raw("ItemAdded", 2, {"product_id": "p-b", "quantity": 1, "unit_price": Decimal("5.00"),
                                 "line_quantity": 3, "total": Decimal("15.00")})
    view = fold([created, added])
    assert view["items"][0]["quantity"] == 3 and view["total"] == "15.00"


def test_item_removed_drops_the_line_and_updates_the_total(script):
    script.create([("p-a", 1), ("p-b", 2), ("p-c", 1)])
    script.remove("p-b")
    view = fold(script.events)
    assert [i["product_id"] for i in view["items"]] == ["p-a", "p-c"]
    assert view["total"] == "80.34"
    assert view["last_seq"] == 2


def test_cancel_sets_status_and_keeps_items_and_total(script):
    script.create([("p-a", 1)])
    script.cancel("changed mind")
    view = fold(script.events)
    assert view["status"] == "cancelled"
    assert view["total"] == "79.99" and len(view["items"]) == 1
    assert view["last_seq"] == 2 and view["updated_at"] == T0 + timedelta(minutes=1)
    assert "tracking_number" not in view


def test_ship_sets_status_and_tracking_number_and_deliver_keeps_it(script):
    script.create([("p-a", 1)])
    script.ship("TRK-42")
    shipped = fold(script.events)
    assert shipped["status"] == "shipped" and shipped["tracking_number"] == "TRK-42"
    script.deliver()
    delivered = fold(script.events)
    assert delivered["status"] == "delivered" and delivered["tracking_number"] == "TRK-42"
    assert delivered["last_seq"] == 3 and delivered["updated_at"] == T0 + timedelta(minutes=2)
    assert delivered["created_at"] == T0


def test_ship_without_tracking_number_records_none(script):
    script.create([("p-a", 1)])
    script.ship()
    assert fold(script.events)["tracking_number"] is None


@pytest.mark.parametrize("kind, payload", [
    ("ItemAdded", {"product_id": "p-a", "quantity": 1, "unit_price": Decimal("1.00"), "line_quantity": 1,
                   "total": Decimal("1.00")}),
    ("ItemRemoved", {"product_id": "p-a", "quantity": 1, "total": Decimal("1.00")}),
    ("OrderCancelled", {"reason": None, "total": Decimal("1.00")}),
    ("OrderShipped", {"tracking_number": None}),
    ("OrderDelivered", {}),
])
def test_event_before_order_created_raises(kind, payload):
    with pytest.raises(ValueError, match="before OrderCreated"):
        apply_order_event(None, raw(kind, 2, payload), REFS)
    with pytest.raises(ValueError, match="before OrderCreated"):
        apply_order_facts(None, raw(kind, 2, payload))


def test_unknown_order_event_raises(script):
    script.create([("p-a", 1)])
    view = fold(script.events)
    with pytest.raises(ValueError, match="unknown order event"):
        apply_order_event(view, raw("OrderExploded", 2, {}), REFS)
    with pytest.raises(ValueError, match="unknown order event"):
        apply_order_facts(fold_facts(script.events), raw("OrderExploded", 2, {}))


def test_applying_an_event_leaves_the_previous_view_untouched(script):
    script.create([("p-a", 1), ("p-b", 2)])
    script.add("p-b", 1)
    script.remove("p-a")
    script.ship("T")
    view = fold(script.events[:1])
    for event in script.events[1:]:
        before = copy.deepcopy(view)
        after = apply_order_event(view, event, REFS)
        assert view == before
        assert after is not view and after["items"] is not view["items"]
        view = after


def test_money_str_formats_two_places():
    assert money_str(Decimal("159.98")) == "159.98"
    assert money_str(Decimal("10")) == "10.00"
    assert money_str("0.5") == "0.50"
    assert money_str(Decimal("9999999999.99")) == "9999999999.99"


# --- customer history entry ----------------------------------------------------------------------------------------

def test_order_summary_shape(script):
    script.create([("p-a", 2), ("p-x", 1)])
    script.ship("T")
    summary = order_summary(fold(script.events))
    assert summary == {
        "order_id": "o-1", "date": T0, "total": "172.48", "status": "shipped",
        "products": [{"product_id": "p-a", "name": "Alpha", "price": "79.99",
                      "image_url": "https://img.example/a.png", "quantity": 2},
                     {"product_id": "p-x", "name": None, "price": "12.50", "image_url": None, "quantity": 1}],
        "last_seq": 2}


# --- product search document ---------------------------------------------------------------------------------------

def product_events() -> tuple[Product, DomainEvent]:
    product, created = create_product("p-1", name="Widget", category="Tools", price=Decimal("19.99"),
                                      description="A widget", subcategory="Hand tools", tags=["Metal", "small"],
                                      image_url="https://img.example/w.png", stock=2)
    return product, created


def test_product_created_document():
    _, created = product_events()
    doc = apply_product_event(None, envelope(created, T0))
    assert doc == {"product_id": "p-1", "name": "Widget", "category": "Tools", "subcategory": "Hand tools",
                   "description": "A widget", "tags": ["metal", "small"], "price": 19.99, "price_text": "19.99",
                   "image_url": "https://img.example/w.png", "in_stock": True, "rating": 0.0,
                   "review_count": 0, "purchase_count": 0, "created_at": "2024-03-09T22:15:00Z",
                   "updated_at": "2024-03-09T22:15:00Z", "last_seq": 1}
    assert isinstance(doc["price"], float)
    assert set(doc) == set(PRODUCTS_MAPPING["properties"]) - COPIED_BY_SALES


def test_product_created_with_zero_stock_is_out_of_stock():
    _, created = create_product("p-2", name="Empty", category="c", price=Decimal("1.50"), stock=0)
    doc = apply_product_event(None, envelope(created, T0))
    assert "stock" not in doc and doc["in_stock"] is False
    assert doc["subcategory"] is None and doc["image_url"] is None and doc["tags"] == []
    assert doc["price"] == 1.5 and doc["price_text"] == "1.50"


def test_product_updated_replaces_details_and_keeps_stock_and_counters():
    product, created = product_events()
    doc = apply_product_event(None, envelope(created, T0))
    doc["purchase_count"] = 7
    _, events = update_product(product, name="Widget Pro", price=Decimal("25"), tags=["new"], image_url="",
                               subcategory=None)
    at = T0 + timedelta(hours=1)
    updated = apply_product_event(doc, envelope(events[0], at))
    assert updated == {**doc, "name": "Widget Pro", "price": 25.0, "price_text": "25.00", "tags": ["new"],
                       "image_url": None, "subcategory": None, "updated_at": "2024-03-09T23:15:00Z", "last_seq": 2}
    assert doc["name"] == "Widget" and doc["last_seq"] == 1
    assert "changed" not in updated
    assert set(updated) == set(PRODUCTS_MAPPING["properties"]) - COPIED_BY_SALES


def test_stock_changes_flip_in_stock_at_zero_and_change_nothing_else():
    product, created = product_events()
    doc = apply_product_event(None, envelope(created, T0))
    seen = []
    for delta in (-1, -1, 3, -3, 5, -1):
        at = T0 + timedelta(minutes=len(seen) + 1)
        product, (event,) = update_product(product, stock=product.stock + delta)
        assert event.event_type == "StockChanged" and event.payload["delta"] == delta
        before, doc = doc, apply_product_event(doc, envelope(event, at))
        seen.append((doc["in_stock"], doc["updated_at"][11:16], doc["last_seq"], search_document_changed(before, doc)))
    # 2 -> 1 -> 0 -> 3 -> 0 -> 5 -> 4: only the flips change the document (its updated_at and last_seq too)
    assert seen == [(True, "22:15", 1, False), (False, "22:17", 3, True), (True, "22:18", 4, True),
                    (False, "22:19", 5, True), (True, "22:20", 6, True), (True, "22:20", 6, False)]
    assert doc["name"] == "Widget" and doc["price_text"] == "19.99" and "stock" not in doc
    assert doc["created_at"] == "2024-03-09T22:15:00Z"


def test_a_search_document_is_written_when_anything_but_its_sequence_changed():
    product, created = product_events()
    doc = apply_product_event(None, envelope(created, T0))
    assert search_document_changed(None, doc)
    assert not search_document_changed(doc, dict(doc))
    assert search_document_changed(doc, {**doc, "last_seq": 9})
    assert search_document_changed(doc, {**doc, "price": 1.0})
    assert search_document_changed({**doc, "stock": 3}, doc)  # an earlier release's field, gone
    _, events = update_product(product, name="Widget Pro")
    assert search_document_changed(doc, apply_product_event(doc, envelope(events[0], T0)))


def test_stock_changed_from_the_aggregate_drives_the_document():
    product, created = product_events()
    _, stock_events = update_product(product, stock=0)
    doc = apply_product_event(None, envelope(created, T0))
    doc = apply_product_event(doc, envelope(stock_events[0], T0))
    assert (doc["in_stock"], doc["last_seq"]) == (False, 2)


@pytest.mark.parametrize("kind", ["ProductUpdated", "StockChanged"])
def test_product_event_before_product_created_raises(kind):
    with pytest.raises(ValueError, match="before ProductCreated"):
        apply_product_event(None, raw(kind, 2, {"stock": 1}, agg="p-1"))


def test_unknown_product_event_raises():
    _, created = product_events()
    doc = apply_product_event(None, envelope(created, T0))
    with pytest.raises(ValueError, match="unknown product event"):
        apply_product_event(doc, raw("ProductDeleted", 2, {}, agg="p-1"))


# --- order facts and sales contributions ---------------------------------------------------------------------------

def test_facts_follow_every_order_event(script):
    script.create([("p-a", 1), ("p-b", 2)])
    facts = fold_facts(script.events)
    assert facts == OrderFacts(T0, "pending", Decimal("89.99"), (("p-a", 1), ("p-b", 2)))
    script.add("p-b", 1)
    script.add("p-c", 10)
    facts = fold_facts(script.events)
    assert facts.items == (("p-a", 1), ("p-b", 3), ("p-c", 10)) and facts.total == Decimal("98.49")
    script.remove("p-a")
    assert fold_facts(script.events).items == (("p-b", 3), ("p-c", 10))
    script.ship("T")
    assert fold_facts(script.events).status == "shipped"
    script.deliver()
    facts = fold_facts(script.events)
    assert facts == OrderFacts(T0, "delivered", Decimal("18.50"), (("p-b", 3), ("p-c", 10)))


def test_cancel_in_facts_keeps_items_and_total(script):
    script.create([("p-a", 1)])
    script.cancel()
    assert fold_facts(script.events) == OrderFacts(T0, "cancelled", Decimal("79.99"), (("p-a", 1),))


def test_ledger_round_trip_is_exact(script):
    script.create([("p-a", 2), ("p-c", 3)])
    facts = fold_facts(script.events)
    ledger = facts.as_ledger()
    assert ledger == {"created_at": "2024-03-09T22:15:00+00:00", "status": "pending", "total": "161.03",
                      "items": [["p-a", 2], ["p-c", 3]]}
    back = OrderFacts.from_ledger(ledger)
    assert back == facts
    assert back.created_at.tzinfo is not None
    assert str(back.total) == "161.03"
    assert sales_contributions(back) == sales_contributions(facts)


def test_ledger_from_json_like_values_round_trips():
    ledger = {"created_at": "2024-01-02T03:04:05+00:00", "status": "shipped", "total": "10.10",
              "items": [["p-a", "2"]]}
    facts = OrderFacts.from_ledger(ledger)
    assert facts.items == (("p-a", 2),)
    assert facts.as_ledger() == {**ledger, "items": [["p-a", 2]]}


def test_facts_continue_from_a_ledger_round_trip_at_every_step(script):
    script.create([("p-a", 1), ("p-b", 2)])
    script.add("p-c", 5)
    script.add("p-a", 1)
    script.remove("p-b")
    script.ship("T")
    script.deliver()
    facts = None
    for event in script.events:
        facts = apply_order_facts(facts, event)
        facts = OrderFacts.from_ledger(facts.as_ledger())
    assert facts == fold_facts(script.events)


def test_sales_contributions_of_a_placed_order(script):
    script.create([("p-a", 2), ("p-c", 3)])
    assert sales_contributions(fold_facts(script.events)) == {
        "day:2024-03-09|orders": 1, "day:2024-03-09|revenue_cents": 16103,
        "day:2024-03-09|hour:22:orders": 1, "day:2024-03-09|hour:22:revenue_cents": 16103,
        "product:p-a|purchase_count": 1, "product:p-a|units_sold": 2,
        "product:p-c|purchase_count": 1, "product:p-c|units_sold": 3}


def test_sales_buckets_use_the_creation_time_not_later_events():
    script = Script(catalog(("p-a", "10.00")), start=datetime(2024, 12, 31, 23, 59, 30, tzinfo=timezone.utc))
    script.create([("p-a", 1)])
    script.ship()
    script.deliver()
    out = sales_contributions(fold_facts(script.events))
    assert out["day:2024-12-31|hour:23:orders"] == 1
    assert out["day:2024-12-31|revenue_cents"] == 1000
    assert not any("2025" in k for k in out)


def test_sales_hour_is_zero_padded():
    facts = OrderFacts(datetime(2024, 5, 1, 7, 0, tzinfo=timezone.utc), "pending", Decimal("0.01"), (("p", 1),))
    out = sales_contributions(facts)
    assert out["day:2024-05-01|hour:07:orders"] == 1 and out["day:2024-05-01|hour:07:revenue_cents"] == 1


def test_revenue_cents_is_exact_for_large_and_awkward_totals():
    for total, cents in [("0.07", 7), ("0.29", 29), ("1.15", 115), ("4.35", 435), ("9999999999.99", 999999999999)]:
        facts = OrderFacts(T0, "pending", Decimal(total), (("p", 1),))
        assert sales_contributions(facts)["day:2024-03-09|revenue_cents"] == cents


def test_shipped_and_delivered_orders_still_count(script):
    script.create([("p-a", 1)])
    placed = sales_contributions(fold_facts(script.events))
    script.ship()
    assert sales_contributions(fold_facts(script.events)) == placed
    script.deliver()
    assert sales_contributions(fold_facts(script.events)) == placed


def test_cancelled_order_contributes_nothing(script):
    script.create([("p-a", 1)])
    script.cancel()
    assert sales_contributions(fold_facts(script.events)) == {}
    assert sales_contributions(None) == {}


# --- properties over random command sequences ----------------------------------------------------------------------

PRICES = (("p-a", "79.99"), ("p-b", "5.00"), ("p-c", "0.35"), ("p-x", "12.50"), ("p-y", "0.99"),
          ("p-z", "1234.56"))


def random_order(rng: random.Random, order_id: str = "o-1", start: datetime = T0,
                 steps: int = 25) -> Script:
    """Create an order and drive random valid-or-rejected commands through the aggregate."""
    script = Script(catalog(*PRICES), start=start)
    ids = [pid for pid, _ in PRICES]
    while script.order is None:
        items = [(rng.choice(ids), rng.randint(1, 5)) for _ in range(rng.randint(1, 4))]
        try:
            script.create(items, order_id=order_id, customer_id=rng.choice(["c-1", "c-2"]))
        except DomainError:
            pass
    for _ in range(rng.randint(0, steps)):
        action = rng.choices(["add", "remove", "cancel", "ship", "deliver"], weights=[10, 5, 1, 1, 1])[0]
        try:
            if action == "add":
                script.add(rng.choice(ids), rng.randint(1, 4))
            elif action == "remove":
                lines = [ln.product_id for ln in script.order.lines] + ["p-missing"]
                script.remove(rng.choice(lines))
            elif action == "cancel":
                script.cancel(rng.choice([None, "reason"]))
            elif action == "ship":
                script.ship(rng.choice([None, f"TRK-{rng.randint(1, 999)}"]))
            else:
                script.deliver()
        except DomainError:
            pass
        script.at += timedelta(minutes=rng.randint(0, 90))
    return script


def expected_items(order: Order) -> list[tuple[str, int, str]]:
    return [(ln.product_id, ln.quantity, money_str(ln.unit_price)) for ln in order.lines]


def view_items(view: dict) -> list[tuple[str, int, str]]:
    return [(i["product_id"], i["quantity"], i["unit_price"]) for i in view["items"]]


@pytest.mark.parametrize("seed", range(150))
def test_folded_view_matches_the_aggregate_and_replays_deterministically(seed):
    rng = random.Random(seed)
    script = random_order(rng)
    order, events = script.order, script.events
    assert [e["sequence_number"] for e in events] == list(range(1, order.version + 1))

    view = fold(events)
    assert view_items(view) == expected_items(order)
    assert view["total"] == money_str(order.total)
    assert view["status"] == order.status.value
    assert view["last_seq"] == order.version
    assert view["customer_id"] == order.customer_id
    assert view["created_at"] == events[0]["occurred_at"] and view["updated_at"] == events[-1]["occurred_at"]
    for item in view["items"]:
        assert item["product_name"] == REFS.product(item["product_id"]).get("name")
    if order.status in (OrderStatus.SHIPPED, OrderStatus.DELIVERED):
        shipped = next(e for e in events if e["event_type"] == "OrderShipped")
        assert view["tracking_number"] == shipped["payload"]["tracking_number"]

    facts = fold_facts(events)
    assert facts.items == tuple((ln.product_id, ln.quantity) for ln in order.lines)
    assert facts.total == order.total and facts.status == order.status.value
    assert facts.created_at == events[0]["occurred_at"]

    snapshot = copy.deepcopy(events)
    for k in range(1, len(events) + 1):
        prefix = events[:k]
        first, second = fold(prefix), fold(prefix)
        assert first == second
        assert first["last_seq"] == k
        assert fold_facts(prefix) == fold_facts(prefix)
        assert order_summary(first) == order_summary(second)
        assert sales_contributions(fold_facts(prefix)) == sales_contributions(fold_facts(prefix))
        resumed = fold(events[k:], view=copy.deepcopy(first))
        assert resumed == view
        assert fold_facts(events[k:], OrderFacts.from_ledger(fold_facts(prefix).as_ledger())) == facts
    assert events == snapshot


@pytest.mark.parametrize("seed", range(30))
def test_summed_sales_contributions_equal_figures_from_the_final_aggregates(seed):
    rng = random.Random(10_000 + seed)
    orders: list[Script] = []
    for n in range(rng.randint(2, 8)):
        start = datetime(2024, 3, rng.randint(1, 3), rng.randint(0, 23), rng.randint(0, 59),
                         tzinfo=timezone.utc)
        orders.append(random_order(rng, order_id=f"o-{n}", start=start, steps=10))

    summed: Counter = Counter()
    for script in orders:
        summed.update(sales_contributions(fold_facts(script.events)))

    expected: Counter = Counter()
    for script in orders:
        order = script.order
        if order.status is OrderStatus.CANCELLED:
            continue
        placed = script.events[0]["occurred_at"]
        day, hour = placed.strftime("%Y-%m-%d"), placed.strftime("%H")
        cents = int(order.total * 100)
        assert Decimal(cents) == order.total * 100
        expected[f"day:{day}|orders"] += 1
        expected[f"day:{day}|revenue_cents"] += cents
        expected[f"day:{day}|hour:{hour}:orders"] += 1
        expected[f"day:{day}|hour:{hour}:revenue_cents"] += cents
        for line in order.lines:
            expected[f"product:{line.product_id}|purchase_count"] += 1
            expected[f"product:{line.product_id}|units_sold"] += line.quantity

    assert +summed == +expected
    assert all(isinstance(v, int) for v in summed.values())
