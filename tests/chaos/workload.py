"""What the simulated users do: a seeded catalogue (customers and products created at the start), then a
realistic mix of order commands over it, chosen from what the answers so far say exists.

The client's view of each order is approximate on purpose (requests run concurrently), so some commands
are refused by business rules (409, e.g. cancelling an order that was just shipped) — that is traffic a
real gateway sees, and the traffic counts such refusals apart from failures.
"""
from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

CATEGORIES = ("Electronics", "Books", "Garden", "Toys", "Kitchen")
WORDS = ("Wireless", "Compact", "Deluxe", "Classic", "Smart", "Eco", "Pro", "Mini", "Solar", "Travel")
NOUNS = ("Headphones", "Lamp", "Kettle", "Backpack", "Speaker", "Novel", "Drone", "Planter", "Blender", "Puzzle")
# command -> weight; the shares of a realistic shop day (orders dominate, catalogue edits are rare)
MIX = {"CreateOrder": 36, "AddItem": 13, "RemoveItem": 4, "CancelOrder": 10, "ShipOrder": 15,
       "DeliverOrder": 10, "UpdatePrice": 4, "UpdateStock": 5, "RenameProduct": 3}
ORDER_COMMANDS = ("AddItem", "RemoveItem", "CancelOrder", "ShipOrder", "DeliverOrder")  # need a pending order


@dataclass(frozen=True)
class Call:
    """One HTTP request of the traffic; `on_success(body)` updates the catalogue from a 2xx answer."""

    name: str
    method: str
    path: str
    body: dict[str, Any] | None = None
    on_success: Callable[[dict[str, Any]], None] | None = None


@dataclass
class Catalogue:
    """The aggregates this run created, and what the client believes about its orders."""

    customers: list[str] = field(default_factory=list)
    products: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    shipped: list[str] = field(default_factory=list)
    orders: list[str] = field(default_factory=list)
    lines: dict[str, set[str]] = field(default_factory=dict)
    order_customer: dict[str, str] = field(default_factory=dict)

    def move(self, order_id: str, source: list[str], target: list[str] | None) -> None:
        if order_id in source:
            source.remove(order_id)
        if target is not None and order_id not in target:
            target.append(order_id)


def seed_catalogue(client: httpx.Client, rng: random.Random, customers: int, products: int) -> Catalogue:
    """Register customers and create products (with ample stock); each request is retried with its
    Idempotency-Key, so a retry after a lost answer never creates a second aggregate."""
    cat = Catalogue()
    tag = uuid.uuid4().hex[:6]
    for i in range(customers):
        body = {"name": f"Chaos Customer {tag}-{i}", "email": f"chaos-{tag}-{i}@example.com"}
        cat.customers.append(_create(client, "/api/customers", body)["customer_id"])
    for i in range(products):
        body = {"name": f"{rng.choice(WORDS)} {rng.choice(NOUNS)} {tag}-{i}", "category": rng.choice(CATEGORIES),
                "price": f"{rng.randint(500, 9000) / 100:.2f}", "stock": rng.randint(20_000, 50_000),
                "tags": ["chaos", tag], "description": "fault-injection catalogue"}
        cat.products.append(_create(client, "/api/products", body)["product_id"])
    return cat


def _create(client: httpx.Client, path: str, body: dict[str, Any], attempts: int = 5) -> dict[str, Any]:
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    for attempt in range(attempts):
        try:
            r = client.post(path, json=body, headers=headers)
        except httpx.HTTPError:
            r = None
        if r is not None and r.status_code == 201:
            return r.json()
        if r is not None and r.status_code < 500:
            raise RuntimeError(f"seeding {path} refused: {r.status_code} {r.text}")
        time.sleep(0.5 * (attempt + 1))
    raise RuntimeError(f"seeding {path}: no 201 after {attempts} attempts")


@dataclass
class CommandMix:
    """Chooses the next command (and the next query-API read) from the catalogue, with a seeded rng."""

    catalogue: Catalogue
    rng: random.Random

    def next_command(self) -> Call:
        names, weights = zip(*MIX.items())
        name = self.rng.choices(names, weights)[0]
        if name in ORDER_COMMANDS and not self.catalogue.pending:
            name = "CreateOrder"
        builders: dict[str, Callable[[], Call]] = {
            "CreateOrder": self._create_order, "AddItem": self._add_item, "RemoveItem": self._remove_item,
            "CancelOrder": self._cancel_order, "ShipOrder": self._ship_order, "DeliverOrder": self._deliver_order,
            "UpdatePrice": self._update_price, "UpdateStock": self._update_stock,
            "RenameProduct": self._rename_product}
        return builders[name]()

    def next_read(self) -> Call:
        cat = self.catalogue
        if cat.orders and self.rng.random() < 0.6:
            oid = self.rng.choice(cat.orders[-200:])
            return Call("GetOrder", "GET", f"/api/orders/{oid}")
        return Call("CustomerOrders", "GET", f"/api/customers/{self.rng.choice(cat.customers)}/orders")

    # ---- commands ----------------------------------------------------------------------------------

    def _create_order(self) -> Call:
        cat = self.catalogue
        customer = self.rng.choice(cat.customers)
        products = self.rng.sample(cat.products, self.rng.randint(1, 3))
        body = {"customer_id": customer,
                "items": [{"product_id": p, "quantity": self.rng.randint(1, 3)} for p in products]}

        def created(answer: dict[str, Any]) -> None:
            oid = answer["order_id"]
            cat.orders.append(oid)
            cat.pending.append(oid)
            cat.lines[oid] = set(products)
            cat.order_customer[oid] = customer
        return Call("CreateOrder", "POST", "/api/orders", body, created)

    def _recent_pending(self) -> str:
        return self.rng.choice(self.catalogue.pending[-300:])

    def _add_item(self) -> Call:
        oid, pid = self._recent_pending(), self.rng.choice(self.catalogue.products)
        body = {"product_id": pid, "quantity": self.rng.randint(1, 2)}
        return Call("AddItem", "POST", f"/api/orders/{oid}/items", body,
                    lambda _: self.catalogue.lines.setdefault(oid, set()).add(pid))

    def _remove_item(self) -> Call:
        oid = self._recent_pending()
        lines = sorted(self.catalogue.lines.get(oid) or self.catalogue.products[:1])
        pid = self.rng.choice(lines)   # the last line is refused (409): cancel instead
        return Call("RemoveItem", "DELETE", f"/api/orders/{oid}/items/{pid}", None,
                    lambda _: self.catalogue.lines.get(oid, set()).discard(pid))

    def _cancel_order(self) -> Call:
        cat = self.catalogue
        shipped = cat.shipped and self.rng.random() < 0.15   # a refusal: cancelling a shipped order
        oid = self.rng.choice(cat.shipped[-100:]) if shipped else self._recent_pending()

        def cancelled(_: dict[str, Any]) -> None:
            cat.move(oid, cat.pending, None)
            cat.move(oid, cat.shipped, None)
        return Call("CancelOrder", "POST", f"/api/orders/{oid}/cancel", {"reason": "changed my mind"}, cancelled)

    def _ship_order(self) -> Call:
        cat, oid = self.catalogue, self._recent_pending()
        body = {"tracking_number": f"TRK{self.rng.randint(1, 10**9)}"}
        return Call("ShipOrder", "POST", f"/api/orders/{oid}/ship", body,
                    lambda _: cat.move(oid, cat.pending, cat.shipped))

    def _deliver_order(self) -> Call:
        cat = self.catalogue
        if not cat.shipped:
            return self._ship_order()
        oid = self.rng.choice(cat.shipped[-200:])
        return Call("DeliverOrder", "POST", f"/api/orders/{oid}/deliver", None,
                    lambda _: cat.move(oid, cat.shipped, None))

    def _update_price(self) -> Call:
        pid = self.rng.choice(self.catalogue.products)
        price = f"{self.rng.randint(500, 9000) / 100:.2f}"
        return Call("UpdatePrice", "PATCH", f"/api/products/{pid}", {"price": price})

    def _update_stock(self) -> Call:
        pid = self.rng.choice(self.catalogue.products)
        return Call("UpdateStock", "PATCH", f"/api/products/{pid}", {"stock": self.rng.randint(5_000, 50_000)})

    def _rename_product(self) -> Call:
        pid = self.rng.choice(self.catalogue.products)
        name = f"{self.rng.choice(WORDS)} {self.rng.choice(NOUNS)} {uuid.uuid4().hex[:4]}"
        return Call("RenameProduct", "PATCH", f"/api/products/{pid}", {"name": name})
