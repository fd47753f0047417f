"""Pure view builders: how each event changes a denormalized read model. No I/O.

Every builder is a function of (current view, event, reference data) -> new view, and records the
event's sequence number, so applying a prefix of an aggregate's events in order always yields the
same view, however often it is replayed.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

CANCELLED = "cancelled"


@dataclass
class ReferenceData:
    """Product and customer details used to enrich order views, loaded once per batch."""

    products: dict[str, dict[str, Any]] = field(default_factory=dict)
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def product(self, product_id: str) -> dict[str, Any]:
        return self.products.get(product_id, {})

    def customer(self, customer_id: str) -> dict[str, Any]:
        return self.customers.get(customer_id, {})


def money_str(value: Decimal | str) -> str:
    return f"{Decimal(value):.2f}"


def _item(product_id: str, quantity: int, unit_price: Decimal, refs: ReferenceData) -> dict[str, Any]:
    ref = refs.product(product_id)
    return {"product_id": product_id, "product_name": ref.get("name"), "product_image": ref.get("image_url"),
            "quantity": quantity, "unit_price": money_str(unit_price)}


def apply_order_event(view: dict[str, Any] | None, event: Mapping[str, Any], refs: ReferenceData) -> dict[str, Any]:
    """The order view after `event`; `view` is None before OrderCreated."""
    kind, p, at = event["event_type"], event["payload"], event["occurred_at"]
    if kind == "OrderCreated":
        customer = refs.customer(p["customer_id"])
        view = {"_id": event["aggregate_id"], "order_id": event["aggregate_id"], "customer_id": p["customer_id"],
                "customer_name": customer.get("name"), "customer_email": customer.get("email"),
                "items": [_item(i["product_id"], i["quantity"], i["unit_price"], refs) for i in p["items"]],
                "total": money_str(p["total"]), "status": p["status"], "created_at": at}
    elif view is None:
        raise ValueError(f"{kind} for order {event['aggregate_id']} before OrderCreated")
    else:
        view = {**view, "items": [dict(i) for i in view["items"]]}
        if kind == "ItemAdded":
            line = next((i for i in view["items"] if i["product_id"] == p["product_id"]), None)
            if line is None:
                view["items"].append(_item(p["product_id"], p["line_quantity"], p["unit_price"], refs))
            else:
                line["quantity"] = p["line_quantity"]
            view["total"] = money_str(p["total"])
        elif kind == "ItemRemoved":
            view["items"] = [i for i in view["items"] if i["product_id"] != p["product_id"]]
            view["total"] = money_str(p["total"])
        elif kind == "OrderCancelled":
            view["status"] = CANCELLED
        elif kind == "OrderShipped":
            view["status"] = "shipped"
            view["tracking_number"] = p.get("tracking_number")
        elif kind == "OrderDelivered":
            view["status"] = "delivered"
        else:
            raise ValueError(f"unknown order event {kind}")
    view["updated_at"] = at
    view["last_seq"] = event["sequence_number"]
    return view


def order_summary(view: Mapping[str, Any]) -> dict[str, Any]:
    """One entry of a customer's order history."""
    return {"order_id": view["order_id"], "date": view["created_at"], "total": view["total"], "status": view["status"],
            "products": [{"product_id": i["product_id"], "name": i["product_name"], "price": i["unit_price"],
                          "image_url": i["product_image"], "quantity": i["quantity"]} for i in view["items"]],
            "last_seq": view["last_seq"]}


def apply_product_event(doc: dict[str, Any] | None, event: Mapping[str, Any]) -> dict[str, Any]:
    """The product search document after `event`. It carries what search finds, filters and shows: whether
    the product is in stock, not the level, so a stock change that leaves it in stock changes nothing, not
    even `last_seq`, which is therefore the sequence of the document's last change however the events were
    batched (see `search_document_changed`)."""
    kind, p, at = event["event_type"], event["payload"], event["occurred_at"]
    if kind == "ProductCreated":
        doc = {"product_id": event["aggregate_id"], "rating": 0.0, "review_count": 0, "purchase_count": 0,
               "created_at": _iso(at), **_details(p), "in_stock": p["stock"] > 0}
    elif doc is None:
        raise ValueError(f"{kind} for product {event['aggregate_id']} before ProductCreated")
    elif kind == "ProductUpdated":
        doc = {**doc, **_details(p)}
    elif kind == "StockChanged":
        if doc.get("in_stock") == (p["stock"] > 0):
            return dict(doc)
        doc = {**doc, "in_stock": p["stock"] > 0}
    else:
        raise ValueError(f"unknown product event {kind}")
    doc["updated_at"] = _iso(at)
    doc["last_seq"] = event["sequence_number"]
    return doc


def search_document_changed(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> bool:
    """Whether the product search document must be written: it differs from the stored one. A stock change
    that keeps the product in stock (most orders' only effect on search) is then not written, and the
    engine's progress tables keep its sequence."""
    return before is None or dict(before) != dict(after)


def _details(p: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": p["name"], "category": p["category"], "subcategory": p.get("subcategory"),
            "description": p["description"], "tags": list(p["tags"]), "price": float(p["price"]),
            "price_text": money_str(p["price"]), "image_url": p.get("image_url")}


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class OrderFacts:
    """The compact order state that sales figures derive from (kept per order in the stats ledger)."""

    created_at: datetime
    status: str
    total: Decimal
    items: tuple[tuple[str, int], ...]

    def as_ledger(self) -> dict[str, Any]:
        return {"created_at": self.created_at.isoformat(), "status": self.status, "total": str(self.total),
                "items": [list(i) for i in self.items]}

    @classmethod
    def from_ledger(cls, data: Mapping[str, Any]) -> OrderFacts:
        return cls(datetime.fromisoformat(data["created_at"]), data["status"], Decimal(data["total"]),
                   tuple((pid, int(q)) for pid, q in data["items"]))


def apply_order_facts(facts: OrderFacts | None, event: Mapping[str, Any]) -> OrderFacts:
    kind, p = event["event_type"], event["payload"]
    if kind == "OrderCreated":
        return OrderFacts(event["occurred_at"], p["status"], Decimal(p["total"]),
                          tuple((i["product_id"], i["quantity"]) for i in p["items"]))
    if facts is None:
        raise ValueError(f"{kind} for order {event['aggregate_id']} before OrderCreated")
    items = dict(facts.items)
    if kind == "ItemAdded":
        items[p["product_id"]] = p["line_quantity"]
        return OrderFacts(facts.created_at, facts.status, Decimal(p["total"]), tuple(items.items()))
    if kind == "ItemRemoved":
        items.pop(p["product_id"], None)
        return OrderFacts(facts.created_at, facts.status, Decimal(p["total"]), tuple(items.items()))
    status = {"OrderCancelled": CANCELLED, "OrderShipped": "shipped", "OrderDelivered": "delivered"}.get(kind)
    if status is None:
        raise ValueError(f"unknown order event {kind}")
    return OrderFacts(facts.created_at, status, facts.total, facts.items)


def sales_contributions(facts: OrderFacts | None) -> dict[str, int]:
    """What one order adds to the sales counters: per-product purchases and units, and the day/hour
    order count and revenue (in cents) of the day it was placed. A cancelled order adds nothing.
    Counters are sums of these per-order contributions, so re-deriving an order never counts twice."""
    if facts is None or facts.status == CANCELLED:
        return {}
    day, hour = facts.created_at.strftime("%Y-%m-%d"), facts.created_at.strftime("%H")
    cents = int((facts.total * 100).to_integral_value())
    out = {f"day:{day}|orders": 1, f"day:{day}|revenue_cents": cents,
           f"day:{day}|hour:{hour}:orders": 1, f"day:{day}|hour:{hour}:revenue_cents": cents}
    for product_id, quantity in facts.items:
        out[f"product:{product_id}|purchase_count"] = 1
        out[f"product:{product_id}|units_sold"] = quantity
    return out
