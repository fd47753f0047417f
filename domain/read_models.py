"""Where each read model lives and what it looks like: the contract between projections (writers)
and the query API (reader). Both sides import these names; nothing else hard-codes them.

MongoDB (database `settings.mongo_database`):
- ORDER_VIEWS `order_views`: one document per order, `_id` = order id —
  {order_id, customer_id, customer_name, customer_email, items: [{product_id, product_name,
  product_image, quantity, unit_price (str)}], total (str), status, tracking_number?, created_at,
  updated_at (datetimes), last_seq}.
- CUSTOMER_HISTORY `customer_order_history`: one document per order of a customer, `_id` =
  `<customer id>:<order id>` — {customer_id, order_id, date, total (str), status, products:
  [{product_id, name, price (str), image_url, quantity}], last_seq}; index (customer_id, date desc).
  A customer's entries are read as the `_id` range `[<customer id>:, <customer id>;)` (primary key).
  One document per order, so only the worker owning that order ever writes it: a document shared
  by a customer's orders would be written by several workers at once, and the local read store
  (FerretDB 1.x) does not serialise concurrent updates of one document (updates were lost).
- PRODUCT_STATS `product_stats`: one document per product, `_id` = product id —
  {product_id, purchase_count, units_sold, version}; written with absolute values, `version` only grows.

Versions (`cqrs rebuild`): version 1 of each read model lives under the names above. A rebuild writes
version N of the order views into `order_views_v<N>` and `customer_order_history_v<N>`, of the sales
figures under the Redis prefix `sales:v<N>:` and into `product_stats_v<N>`; READ_MODEL_VERSIONS says
which version serves (agents.read_model_versions). The search index is versioned behind its alias; the
purchase counts the sales projection copies into it carry `sales_version`, so a copy from an older
sales version never overwrites one from a newer.

Elasticsearch: PRODUCTS_ALIAS `products` -> a versioned index `products-v<N>`, documents `_id` =
product id: {product_id, name, category, subcategory, description, tags, price (double), price_text,
image_url, in_stock, rating, review_count, purchase_count, created_at, updated_at, last_seq}. Not the
stock level: search finds, filters and shows whether a product is in stock, and writing the level on
every order was most of the index's writes (indexes built before carry a `stock` field, which the
workers remove when they start: agents.product_search.ensure_products_index).

Redis:
- SALES_PREFIX `sales:` hashes: `sales:day:<YYYY-MM-DD>` {orders, revenue_cents, hour:<HH>:orders,
  hour:<HH>:revenue_cents}; `sales:product:<id>` {purchase_count, units_sold, version};
  `sales:ledger:<order id>` per-order ledger (seq, state, contributions).
- CACHE_PREFIX `cache:`: query-API cache entries, e.g. `cache:order:<id>`; projections delete the
  entries of what they change, so a cached read is never older than the projection.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ORDER_VIEWS = "order_views"
READ_MODEL_VERSIONS = "read_model_versions"
CUSTOMER_HISTORY = "customer_order_history"
PRODUCT_STATS = "product_stats"
PRODUCTS_ALIAS = "products"
SALES_PREFIX = "sales:"
CACHE_PREFIX = "cache:"
CACHE_TTL_S = 60


@dataclass(frozen=True)
class OrderCollections:
    """The two collections one version of the order-views read model writes."""

    views: str = ORDER_VIEWS
    history: str = CUSTOMER_HISTORY


def require_version(version: int) -> int:
    if version < 1:
        raise ValueError(f"read-model versions start at 1, not {version}")
    return version


def versioned(name: str, version: int, marker: str = "_v", suffix: str = "") -> str:
    """`name` for version 1 (a deployment that never rebuilt reads what it always did), else
    `<name><marker><version><suffix>`."""
    return name if require_version(version) == 1 else f"{name}{marker}{version}{suffix}"


def order_collections(version: int) -> OrderCollections:
    return OrderCollections(versioned(ORDER_VIEWS, version), versioned(CUSTOMER_HISTORY, version))


def sales_prefix(version: int) -> str:
    """The Redis key prefix of one version of the sales figures. No version-1 key starts with `sales:v<digit>`
    (they are `sales:day:`, `sales:product:`, `sales:ledger:`, `sales:dirty-products`), so the versions'
    key spaces never overlap."""
    return versioned(SALES_PREFIX, version, marker="v", suffix=":")


def product_stats_collection(version: int) -> str:
    return versioned(PRODUCT_STATS, version)


def products_index(alias: str, version: int) -> str:
    """The concrete search index of one version behind `alias` (version 1 included: the alias is the name)."""
    return f"{alias}-v{require_version(version)}"


def products_index_version(alias: str, index: str) -> int | None:
    """The version of `index` if it is one of `alias`'s versioned indices, else None."""
    stem = f"{alias}-v"
    tail = index[len(stem):] if index.startswith(stem) else ""
    return int(tail) if tail.isdigit() and int(tail) >= 1 else None


def order_cache_key(order_id: str) -> str:
    return f"{CACHE_PREFIX}order:{order_id}"


HISTORY_INDEX = [("customer_id", 1), ("date", -1)]


def history_entry_id(customer_id: str, order_id: str) -> str:
    return f"{customer_id}:{order_id}"


def customer_history_filter(customer_id: str) -> dict[str, Any]:
    """A customer's history entries: the `_id` key range `[<customer>:, <customer>;)` (';' follows ':'), which
    the primary-key index serves on any MongoDB-compatible store, and the customer field itself, so the
    answer never depends on the id format."""
    prefix = history_entry_id(customer_id, "")
    return {"_id": {"$gte": prefix, "$lt": prefix[:-1] + chr(ord(prefix[-1]) + 1)}, "customer_id": customer_id}


def customer_history_cache_key(customer_id: str) -> str:
    return f"{CACHE_PREFIX}customer-orders:{customer_id}"


def sales_day_key(day: str, prefix: str = SALES_PREFIX) -> str:
    return f"{prefix}day:{day}"


def sales_product_key(product_id: str, prefix: str = SALES_PREFIX) -> str:
    return f"{prefix}product:{product_id}"


PRODUCTS_MAPPING = {
    "dynamic": "strict",
    "properties": {
        "product_id": {"type": "keyword"},
        "name": {"type": "text", "fields": {"raw": {"type": "keyword", "ignore_above": 256}}},
        "category": {"type": "keyword"},
        "subcategory": {"type": "keyword"},
        "description": {"type": "text"},
        "tags": {"type": "text", "fields": {"raw": {"type": "keyword"}}},
        "price": {"type": "double"},
        "price_text": {"type": "keyword", "index": False},
        "image_url": {"type": "keyword", "index": False},
        "in_stock": {"type": "boolean"},
        "rating": {"type": "float"},
        "review_count": {"type": "integer"},
        "purchase_count": {"type": "integer"},
        "sales_version": {"type": "integer"},
        "purchase_count_version": {"type": "long"},
        "created_at": {"type": "date"},
        "updated_at": {"type": "date"},
        "last_seq": {"type": "long"},
    },
}
