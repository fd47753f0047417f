"""Write-model persistence: load aggregates (locking their rows) and save what the domain decided.

Loading takes row locks (SELECT ... FOR UPDATE) in a fixed order (ids sorted), so concurrent
commands on one aggregate serialize and never deadlock; outbox rows are therefore inserted in
each aggregate's commit order.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

from domain.customers import Customer
from domain.orders import Order, OrderLine, OrderStatus
from domain.products import Product


@dataclass(frozen=True)
class Write:
    """One data-modifying statement, to be combined with the others of a command."""

    sql: str
    params: tuple[Any, ...]


async def execute_writes(conn: AsyncConnection, writes: Sequence[Write]) -> None:
    """Run all of a command's writes as ONE statement (data-modifying CTEs): one round trip, and the
    statement's constraints are checked at its end, so parents and children may be inserted together."""
    writes = [w for w in writes if w is not None]
    if not writes:
        return
    if len(writes) == 1:
        await conn.execute(writes[0].sql, writes[0].params)
        return
    sql = "with " + ", ".join(f"w{i} as ({w.sql})" for i, w in enumerate(writes)) + " select 1"
    await conn.execute(sql, tuple(p for w in writes for p in w.params))


async def load_customer(conn: AsyncConnection, customer_id: str, *, lock: bool = False) -> Customer | None:
    sql = "select customer_id, name, email, version from customers where customer_id = %s"
    row = await (await conn.execute(sql + (" for update" if lock else ""), (customer_id,))).fetchone()
    return Customer(*row) if row else None


async def email_taken(conn: AsyncConnection, email: str, *, other_than: str | None = None) -> bool:
    cur = await conn.execute("select 1 from customers where email = %s and customer_id is distinct from %s",
                             (email, other_than))
    return await cur.fetchone() is not None


def insert_customer(c: Customer) -> list[Write]:
    return [Write("insert into customers (customer_id, name, email, version) values (%s, %s, %s, %s)",
                  (c.customer_id, c.name, c.email, c.version))]


def update_customer(c: Customer) -> list[Write]:
    return [Write("update customers set name = %s, email = %s, version = %s, updated_at = now() "
                  "where customer_id = %s", (c.name, c.email, c.version, c.customer_id))]


_PRODUCT_COLUMNS = ("p.product_id, p.name, p.category, p.subcategory, p.description, p.tags, p.price, "
                    "p.image_url, s.available, p.version")


def _product(row: Sequence) -> Product:
    pid, name, category, subcategory, description, tags, price, image_url, stock, version = row
    return Product(pid, name, category, subcategory, description, tuple(tags), price, image_url, stock, version)


def _products_sql(lock: bool) -> str:
    return (f"select {_PRODUCT_COLUMNS} from products p join stock s using (product_id) "
            f"where p.product_id = any(%s) order by p.product_id" + (" for update" if lock else ""))


async def load_products(conn: AsyncConnection, product_ids: Iterable[str], *, lock: bool = True) -> dict[str, Product]:
    ids = sorted(set(product_ids))
    if not ids:
        return {}
    rows = await (await conn.execute(_products_sql(lock), (ids,))).fetchall()
    return {row[0]: _product(row) for row in rows}


async def load_order_inputs(conn: AsyncConnection, customer_id: str,
                            product_ids: Iterable[str]) -> tuple[bool, dict[str, Product]]:
    """Whether the customer exists, and the (locked) products — both queries sent before either result
    is read, so in pipeline mode they cost one round trip."""
    customer = await conn.execute("select 1 from customers where customer_id = %s for share", (customer_id,))
    products = await conn.execute(_products_sql(True), (sorted(set(product_ids)),))
    exists = await customer.fetchone() is not None
    return exists, {row[0]: _product(row) for row in await products.fetchall()}


def insert_product(p: Product) -> list[Write]:
    return [
        Write("insert into products (product_id, name, category, subcategory, description, tags, price, image_url, "
              "version) values (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
              (p.product_id, p.name, p.category, p.subcategory, p.description, list(p.tags), p.price, p.image_url,
               p.version)),
        Write("insert into stock (product_id, available) values (%s, %s)", (p.product_id, p.stock)),
    ]


def save_products(products: Sequence[Product]) -> list[Write]:
    """Persist changed products (details, stock and version) with two set-based writes."""
    if not products:
        return []
    ids = [p.product_id for p in products]
    return [Write(
        "update products p set name = v.name, category = v.category, subcategory = v.subcategory, "
        "description = v.description, tags = v.tags::text[], price = v.price, image_url = v.image_url, "
        "version = v.version, updated_at = now() "
        "from (select unnest(%s::text[]) as product_id, unnest(%s::text[]) as name, unnest(%s::text[]) as category, "
        "unnest(%s::text[]) as subcategory, unnest(%s::text[]) as description, unnest(%s::text[]) as tags, "
        "unnest(%s::numeric[]) as price, unnest(%s::text[]) as image_url, unnest(%s::int[]) as version) v "
        "where p.product_id = v.product_id",
        (ids, [p.name for p in products], [p.category for p in products], [p.subcategory for p in products],
         [p.description for p in products], ["{" + ",".join(_pg_array_item(t) for t in p.tags) + "}"
                                              for p in products],
         [p.price for p in products], [p.image_url for p in products], [p.version for p in products])),
        Write("update stock s set available = v.available, updated_at = now() "
              "from (select unnest(%s::text[]) as product_id, unnest(%s::int[]) as available) v "
              "where s.product_id = v.product_id", (ids, [p.stock for p in products]))]


def _pg_array_item(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def load_order(conn: AsyncConnection, order_id: str, *, lock: bool = True) -> Order | None:
    cur = await conn.execute("select order_id, customer_id, status, version from orders where order_id = %s"
                             + (" for update" if lock else ""), (order_id,))
    row = await cur.fetchone()
    if row is None:
        return None
    lines = await (await conn.execute(
        "select product_id, quantity, unit_price from order_items where order_id = %s order by line_no",
        (order_id,))).fetchall()
    return Order(row[0], row[1], OrderStatus(row[2]), tuple(OrderLine(*ln) for ln in lines), row[3])


def insert_order(order: Order) -> list[Write]:
    return [Write("insert into orders (order_id, customer_id, status, total, version) values (%s, %s, %s, %s, %s)",
                  (order.order_id, order.customer_id, order.status.value, order.total, order.version)),
            _upsert_lines(order)]


def _upsert_lines(order: Order) -> Write:
    ids = [ln.product_id for ln in order.lines]
    return Write(
        "insert into order_items (order_id, product_id, line_no, quantity, unit_price) "
        "select %s, unnest(%s::text[]), generate_subscripts(%s::text[], 1), unnest(%s::int[]), "
        "unnest(%s::numeric[]) on conflict (order_id, product_id) do update set "
        "line_no = excluded.line_no, quantity = excluded.quantity, unit_price = excluded.unit_price",
        (order.order_id, ids, ids, [ln.quantity for ln in order.lines], [ln.unit_price for ln in order.lines]))


def save_order(order: Order, *, lines_changed: bool) -> list[Write]:
    writes = [Write("update orders set status = %s, total = %s, version = %s, updated_at = now() "
                    "where order_id = %s", (order.status.value, order.total, order.version, order.order_id))]
    if lines_changed:
        writes.append(Write("delete from order_items where order_id = %s and product_id <> all(%s::text[])",
                            (order.order_id, [ln.product_id for ln in order.lines])))
        writes.append(_upsert_lines(order))
    return writes


def append_outbox(rows: Sequence[dict]) -> list[Write]:
    """Insert encoded events; a statement trigger NOTIFYs the relay when the transaction commits."""
    if not rows:
        return []
    return [Write(
        "insert into outbox (event_id, topic, aggregate_type, aggregate_id, sequence_number, event_type, payload, "
        "headers) select unnest(%s::uuid[]), unnest(%s::text[]), unnest(%s::text[]), unnest(%s::text[]), "
        "unnest(%s::bigint[]), unnest(%s::text[]), unnest(%s::bytea[]), unnest(%s::jsonb[])",
        tuple(list(col) for col in zip(*[(r["event_id"], r["topic"], r["aggregate_type"], r["aggregate_id"],
                                           r["sequence_number"], r["event_type"], r["payload"], r["headers"])
                                          for r in rows])))]


def utc_iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")
