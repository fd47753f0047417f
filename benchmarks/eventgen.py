"""Realistic event streams for projection benchmarks, produced by the pure aggregates of `domain/`.

Customers register, a catalogue of products is created (popularity follows a Zipf-like curve),
and orders go through their lives interleaved with each other: created with 1-3 lines (reserving
stock), sometimes changed (items added or removed), then cancelled (releasing stock) or shipped and
mostly delivered; now and then products are re-priced or restocked and customers update details.
Every event is what the aggregate emits, so per-aggregate sequence numbers are gapless and every
business rule holds. Deterministic for a given seed.
"""
from __future__ import annotations

import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from domain.customers import Customer, register_customer, update_customer
from domain.errors import DomainError
from domain.events import DomainEvent
from domain.orders import (
    Order,
    OrderStatus,
    add_item,
    cancel_order,
    create_order,
    deliver_order,
    remove_item,
    ship_order,
)
from domain.products import Product, create_product, update_product

CATEGORIES = {
    "Electronics": ["Audio", "Cables", "Phones", "Laptops"],
    "Home": ["Kitchen", "Garden", "Lighting"],
    "Books": ["Fiction", "Science", "History"],
    "Sports": ["Running", "Cycling", "Outdoor"],
    "Toys": ["Puzzles", "Games"],
}
WORDS = ("wireless", "compact", "premium", "classic", "eco", "smart", "portable", "deluxe", "mini", "pro")
NOUNS = ("headphones", "cable", "lamp", "kettle", "novel", "bottle", "backpack", "puzzle", "speaker", "charger")


@dataclass
class GeneratedEvent:
    topic: str                 # un-prefixed topic name, e.g. "order-events"
    key: str                   # aggregate id
    envelope: dict[str, Any]   # ready for EventCodec.encode
    headers: list[tuple[str, bytes]]


@dataclass
class EventStream:
    events: list[GeneratedEvent] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)       # by event type
    per_topic: Counter = field(default_factory=Counter)
    aggregates: Counter = field(default_factory=Counter)   # by topic


class _Generator:
    def __init__(self, total: int, seed: int, span: timedelta, end: datetime) -> None:
        self.rnd = random.Random(seed)
        self.total = total
        self.start = end - span
        self.step = span / max(total, 1)
        self.out = EventStream()
        self.customers: dict[str, Customer] = {}
        self.customer_ids: list[str] = []
        self.products: dict[str, Product] = {}
        self.product_ids: list[str] = []
        self.product_weights: list[float] = []
        self.active: list[Order] = []

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rnd.getrandbits(128), version=4))

    def emit(self, events: tuple[DomainEvent, ...] | list[DomainEvent]) -> None:
        """One command's events: they share the command's time, correlation and causation ids."""
        command_id = self.uid()
        at = self.start + self.step * len(self.out.events)
        for event in events:
            event_id = self.uid()
            topic = event.aggregate_type.topic
            envelope = {"event_id": event_id, "event_type": event.event_type, "aggregate_id": event.aggregate_id,
                        "sequence_number": event.sequence_number, "occurred_at": at,
                        "correlation_id": command_id, "causation_id": command_id,
                        "payload": (f"cqrs.events.{event.aggregate_type.value}.{event.event_type}", event.payload)}
            headers = [("event_type", event.event_type.encode()), ("event_id", event_id.encode()),
                       ("sequence_number", str(event.sequence_number).encode())]
            self.out.events.append(GeneratedEvent(topic, event.aggregate_id, envelope, headers))
            self.out.counts[event.event_type] += 1
            self.out.per_topic[topic] += 1
            if event.sequence_number == 1:
                self.out.aggregates[topic] += 1

    # ---- commands ------------------------------------------------------------------------------

    def new_customer(self) -> None:
        cid = self.uid()
        n = len(self.customer_ids)
        customer, event = register_customer(cid, f"Customer {n}", f"customer-{n}-{cid[:8]}@example.com",
                                            email_taken=False)
        self.customers[cid] = customer
        self.customer_ids.append(cid)
        self.emit([event])

    def new_product(self) -> None:
        pid = self.uid()
        category = self.rnd.choice(list(CATEGORIES))
        name = f"{self.rnd.choice(WORDS).title()} {self.rnd.choice(NOUNS)} {len(self.product_ids)}"
        product, event = create_product(
            pid, name=name, category=category, subcategory=self.rnd.choice(CATEGORIES[category]),
            price=Decimal(self.rnd.randint(200, 20000)) / 100, description=f"{name}: a fine product for everyday use.",
            tags=self.rnd.sample(WORDS, 3), image_url=f"https://img.example/{pid[:8]}.png",
            stock=self.rnd.randint(200_000, 2_000_000))
        self.products[pid] = product
        self.product_ids.append(pid)
        self.product_weights.append(1.0 / (len(self.product_ids) ** 0.8))
        self.emit([event])

    def pick_products(self, k: int) -> list[str]:
        picked: list[str] = []
        while len(picked) < k:
            pid = self.rnd.choices(self.product_ids, cum_weights=self.cum_weights)[0]
            if pid not in picked:
                picked.append(pid)
        return picked

    def apply(self, decision) -> Order:
        for product in decision.products:
            self.products[product.product_id] = product
        self.emit(decision.events)
        return decision.order

    def new_order(self) -> None:
        items = [(pid, self.rnd.choice((1, 1, 1, 2, 2, 3))) for pid in self.pick_products(self.rnd.randint(1, 3))]
        try:
            decision = create_order(self.uid(), self.rnd.choice(self.customer_ids), items, customer_exists=True,
                                    products=self.products)
        except DomainError:      # e.g. below the minimum total: the customer would be told, nothing emitted
            return
        self.active.append(self.apply(decision))

    def advance_order(self) -> None:
        i = self.rnd.randrange(len(self.active))
        order = self.active[i]
        r = self.rnd.random()
        try:
            if order.status is OrderStatus.PENDING:
                if r < 0.15:
                    pid = self.pick_products(1)[0]
                    order = self.apply(add_item(order, self.products[pid], self.rnd.randint(1, 2)))
                elif r < 0.23 and len(order.lines) > 1:
                    line = self.rnd.choice(order.lines)
                    order = self.apply(remove_item(order, line.product_id, self.products))
                elif r < 0.32:
                    order = self.apply(cancel_order(order, self.products, reason="changed mind"))
                else:
                    order = self.apply(ship_order(order, tracking_number=f"TRK-{self.rnd.randrange(10**9):09d}"))
            elif order.status is OrderStatus.SHIPPED and r < 0.9:
                order = self.apply(deliver_order(order))
            else:
                order = None         # delivered, cancelled, or shipped and never confirmed: done
        except DomainError:
            pass                     # e.g. removing a line would go below the minimum total
        if order is None or order.status in (OrderStatus.DELIVERED, OrderStatus.CANCELLED):
            self.active[i] = self.active[-1]
            self.active.pop()
        else:
            self.active[i] = order

    def update_a_product(self) -> None:
        pid = self.rnd.choice(self.product_ids)
        product = self.products[pid]
        if self.rnd.random() < 0.5:
            changes = {"price": (product.price * Decimal(self.rnd.choice(("0.9", "1.1")))).quantize(Decimal("0.01"))}
            if changes["price"] <= 0:
                return
            product, events = update_product(product, **changes)
        else:
            product, events = update_product(product, stock=product.stock + self.rnd.randint(1000, 50_000))
        self.products[pid] = product
        self.emit(events)

    def update_a_customer(self) -> None:
        cid = self.rnd.choice(self.customer_ids)
        customer, events = update_customer(self.customers[cid], name=f"{self.customers[cid].name} Jr")
        self.customers[cid] = customer
        self.emit(events)

    # ---- the stream ----------------------------------------------------------------------------

    def run(self) -> EventStream:
        n_products = max(50, self.total // 200)
        n_customers = max(100, self.total // 20)     # ~3-4 orders per customer over the run
        for _ in range(n_customers // 2):
            self.new_customer()
        for _ in range(n_products):
            self.new_product()
        self.cum_weights = []
        acc = 0.0
        for w in self.product_weights:
            acc += w
            self.cum_weights.append(acc)
        in_flight = max(50, min(3000, self.total // 60))
        while len(self.out.events) < self.total:
            r = self.rnd.random()
            if r < 0.002:
                self.update_a_product()
            elif r < 0.003:
                self.update_a_customer()
            elif r < 0.03 and len(self.customer_ids) < n_customers:
                self.new_customer()
            elif not self.active or (len(self.active) < in_flight and r < 0.40):
                self.new_order()
            else:
                self.advance_order()
        del self.out.events[self.total:]   # exactly `total` (a cut command's tail events are simply not sent)
        return self.out


def generate(total: int, *, seed: int = 20240601, span: timedelta = timedelta(days=3),
             end: datetime | None = None) -> EventStream:
    """`total` events in publication order; recounted after the cut so the figures match what is sent."""
    stream = _Generator(total, seed, span, end or datetime.now(timezone.utc).replace(microsecond=0)).run()
    stream.counts, stream.per_topic, stream.aggregates = Counter(), Counter(), Counter()
    for e in stream.events:
        stream.counts[e.envelope["event_type"]] += 1
        stream.per_topic[e.topic] += 1
        if e.envelope["sequence_number"] == 1:
            stream.aggregates[e.topic] += 1
    return stream
