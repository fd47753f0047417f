"""The query side's read-only look at the write model: its fallback when a view lags or is missing.

Kept apart from the command side's store, so reads never depend on how commands write.
"""
from __future__ import annotations

from psycopg import AsyncConnection
from psycopg.rows import dict_row


async def order_snapshot(conn: AsyncConnection, order_id: str) -> dict | None:
    """The order as the write model has it, joined for display."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "select o.order_id, o.customer_id, c.name as customer_name, c.email as customer_email, o.status, "
        "o.total, o.version, o.created_at, o.updated_at from orders o join customers c using (customer_id) "
        "where o.order_id = %s", (order_id,))
    order = await cur.fetchone()
    if order is None:
        return None
    await cur.execute(
        "select i.product_id, p.name as product_name, p.image_url as product_image, i.quantity, "
        "i.unit_price from order_items i join products p using (product_id) where i.order_id = %s "
        "order by i.line_no", (order_id,))
    order["items"] = await cur.fetchall()
    return order


async def customer_exists(conn: AsyncConnection, customer_id: str) -> bool:
    cur = await conn.execute("select 1 from customers where customer_id = %s", (customer_id,))
    return await cur.fetchone() is not None
