"""Product aggregate: catalogue details, a positive price and an available stock level.

Stock is the quantity still available to order: orders reserve from it and cancellations
release back into it, each change emitted as StockChanged with the new level and the delta.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal

from domain.errors import InvalidCommand, RuleViolation
from domain.events import AggregateType, DomainEvent
from domain.money import MAX_MONEY, money

DETAIL_FIELDS = ("name", "category", "subcategory", "description", "tags", "image_url")
MAX_TAGS = 50


@dataclass(frozen=True)
class Product:
    product_id: str
    name: str
    category: str
    subcategory: str | None
    description: str
    tags: tuple[str, ...]
    price: Decimal
    image_url: str | None
    stock: int
    version: int

    def details(self) -> dict:
        return {"name": self.name, "category": self.category, "subcategory": self.subcategory,
                "description": self.description, "tags": list(self.tags), "price": self.price,
                "image_url": self.image_url}


def _required(value: str | None, field: str) -> str:
    cleaned = " ".join((value or "").split())
    if not cleaned:
        raise InvalidCommand(f"{field} is required", field=field)
    return cleaned


def _price(value: Decimal) -> Decimal:
    try:
        amount = money(value)
    except ValueError as exc:
        raise InvalidCommand(f"price is not a valid amount: {value!r}", field="price") from exc
    if amount <= 0:
        raise InvalidCommand("price must be greater than 0", field="price")
    if amount > MAX_MONEY:
        raise InvalidCommand("price is too large", field="price")
    return amount


def _stock(value: int) -> int:
    if value < 0:
        raise InvalidCommand("stock must not be negative", field="stock")
    return value


def _tags(tags: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    cleaned = tuple(dict.fromkeys(t.strip().lower() for t in tags if t.strip()))
    if len(cleaned) > MAX_TAGS:
        raise InvalidCommand(f"at most {MAX_TAGS} tags", field="tags")
    return cleaned


def create_product(product_id: str, *, name: str, category: str, price: Decimal, description: str = "",
                   subcategory: str | None = None, tags: list[str] | tuple[str, ...] = (),
                   image_url: str | None = None, stock: int = 0) -> tuple[Product, DomainEvent]:
    product = Product(product_id, _required(name, "name"), _required(category, "category"),
                      (subcategory or "").strip() or None, description.strip(), _tags(tags), _price(price),
                      (image_url or "").strip() or None, _stock(stock), version=1)
    return product, DomainEvent(AggregateType.PRODUCT, product_id, 1, "ProductCreated",
                                {**product.details(), "stock": product.stock})


def update_product(product: Product, *, stock: int | None = None, **changes) -> tuple[Product, list[DomainEvent]]:
    """Apply a partial update: details/price as one ProductUpdated, a stock level as one StockChanged."""
    unknown = set(changes) - set(DETAIL_FIELDS) - {"price"}
    if unknown:
        raise InvalidCommand(f"unknown field {sorted(unknown)[0]}", field=sorted(unknown)[0])
    normalized: dict = {}
    for key, value in changes.items():
        if key in ("name", "category"):
            normalized[key] = _required(value, key)
        elif key == "price":
            normalized[key] = _price(value)
        elif key == "tags":
            normalized[key] = _tags(value or ())
        elif key == "description":
            normalized[key] = (value or "").strip()
        else:
            normalized[key] = (value or "").strip() or None
    changed = [k for k, v in normalized.items() if getattr(product, k) != v]
    events: list[DomainEvent] = []
    updated = product
    if changed:
        updated = replace(product, **{k: normalized[k] for k in changed}, version=product.version + 1)
        events.append(DomainEvent(AggregateType.PRODUCT, product.product_id, updated.version, "ProductUpdated",
                                  {**updated.details(), "changed": sorted(changed)}))
    if stock is not None and _stock(stock) != product.stock:
        updated, event = change_stock(updated, stock - updated.stock, reason="adjusted")
        events.append(event)
    return updated, events


def change_stock(product: Product, delta: int, *, reason: str) -> tuple[Product, DomainEvent]:
    """Reserve (delta < 0) or release (delta > 0) stock; never lets available stock go negative."""
    new_level = product.stock + delta
    if new_level < 0:
        raise RuleViolation(f"insufficient stock for product {product.product_id}: "
                            f"{product.stock} available, {-delta} requested",
                            code="insufficient_stock", field="items")
    updated = replace(product, stock=new_level, version=product.version + 1)
    return updated, DomainEvent(AggregateType.PRODUCT, product.product_id, updated.version, "StockChanged",
                                {"stock": new_level, "delta": delta, "reason": reason})
