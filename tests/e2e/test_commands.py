"""The command side end to end: HTTP requests to real gateway processes, the write model in
PostgreSQL, the outbox relay and the Avro events on Kafka."""
from __future__ import annotations

import copy
import io
import json
import struct
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from decimal import Decimal

import fastavro
import httpx
import pytest

from app.commands.relay import RELAY_LOCK_KEY
from connectors import registry
from tests.e2e.conftest import (
    create_customer,
    create_order,
    create_product,
    deadline,
    make_client,
    money,
    nothing_written,
    refused,
    relay_lock_holder,
    stock_of,
    unique_email,
)

ORDER_EVENTS, PRODUCT_EVENTS, CUSTOMER_EVENTS = "order-events", "product-events", "customer-events"


def accepted(r: httpx.Response, status: int, kind: str, version: int) -> dict:
    """A successful command: status, {<kind>_id, status: accepted, version} and the version as ETag."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == "accepted"
    assert body["version"] == version
    assert isinstance(body[f"{kind}_id"], str) and body[f"{kind}_id"]
    assert r.headers["ETag"] == f'"{version}"'
    assert "Idempotent-Replayed" not in r.headers
    return body


def order_row(db, order_id: str) -> tuple:
    return db.execute("select status, total, version from orders where order_id = %s", (order_id,)).fetchone()


def wait_published(db, aggregate_id: str, n: int, timeout: float = 15.0) -> list[tuple]:
    """Until the aggregate's n outbox rows are all marked published (bounded)."""
    end = deadline(timeout)
    while True:
        rows = db.execute("select sequence_number, published_at from outbox where aggregate_id = %s "
                          "order by sequence_number", (aggregate_id,)).fetchall()
        if len(rows) >= n and all(r[1] is not None for r in rows):
            return rows
        assert time.monotonic() < end, f"outbox rows of {aggregate_id} not published: {rows}"
        time.sleep(0.1)


@pytest.fixture
def race(gateway, token):
    """race(n, send): call send(client, i) for i in 0..n-1 at the same moment, from n threads with one
    already-connected client each; returns the responses in order of i."""

    def run(n: int, send) -> list[httpx.Response]:
        barrier = threading.Barrier(n)

        def one(i: int) -> httpx.Response:
            with make_client(gateway.url, token) as c:
                c.get("/healthz")  # connect first, so the commands themselves race
                barrier.wait(timeout=10)
                return send(c, i)

        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(one, range(n)))

    return run


# ---- every endpoint succeeds ---------------------------------------------------------------------

def test_register_and_update_customer(client, db):
    email = unique_email("ada")
    r = client.post("/api/customers", json={"name": "  Ada   Lovelace ", "email": f"  {email} "})
    customer_id = accepted(r, 201, "customer", 1)["customer_id"]
    assert db.execute("select name, email, version from customers where customer_id = %s",
                      (customer_id,)).fetchone() == ("Ada Lovelace", email.lower(), 1)

    new_email = unique_email("countess")
    r = client.patch(f"/api/customers/{customer_id}", json={"name": "Ada King", "email": new_email})
    assert accepted(r, 202, "customer", 2)["customer_id"] == customer_id
    assert db.execute("select name, email, version from customers where customer_id = %s",
                      (customer_id,)).fetchone() == ("Ada King", new_email.lower(), 2)

    r = client.patch(f"/api/customers/{customer_id}", json={"name": "Ada King"}, headers={"If-Match": '"2"'})
    accepted(r, 202, "customer", 2)  # nothing changed: same version, no event
    assert db.execute("select count(*) from outbox where aggregate_id = %s", (customer_id,)).fetchone()[0] == 2


def test_create_and_update_product(client, db):
    name = f"Lamp {uuid.uuid4().hex[:8]}"
    r = client.post("/api/products", json={
        "name": name, "category": "lighting", "subcategory": "desk", "price": "12.34", "stock": 7,
        "description": "  A lamp.  ", "tags": ["Light", "light", " desk "], "image_url": "https://img.example/l.png"})
    product_id = accepted(r, 201, "product", 1)["product_id"]
    row = db.execute("select p.name, p.category, p.subcategory, p.description, p.tags, p.price, p.version, "
                     "s.available from products p join stock s using (product_id) where product_id = %s",
                     (product_id,)).fetchone()
    assert row == (name, "lighting", "desk", "A lamp.", ["light", "desk"], Decimal("12.34"), 1, 7)

    r = client.patch(f"/api/products/{product_id}", json={"price": 15.5, "stock": 9})
    accepted(r, 202, "product", 3)  # ProductUpdated (v2) then StockChanged (v3)
    assert db.execute("select p.price, p.version, s.available from products p join stock s using (product_id) "
                      "where product_id = %s", (product_id,)).fetchone() == (Decimal("15.50"), 3, 9)


def test_every_order_command(client, db):
    customer = create_customer(client)
    p1, p2, p3 = (create_product(client, price="6.00") for _ in range(3))

    r = client.post("/api/orders", json={"customer_id": customer, "items": [
        {"product_id": p1, "quantity": 1}, {"product_id": p2, "quantity": 1}]})
    body = accepted(r, 201, "order", 1)
    order_id = body["order_id"]
    assert money(body["total"]) == Decimal("12.00")
    assert order_row(db, order_id) == ("pending", Decimal("12.00"), 1)

    r = client.post(f"/api/orders/{order_id}/items", json={"product_id": p3, "quantity": 2})
    assert accepted(r, 202, "order", 2)["order_id"] == order_id
    assert money(r.json()["total"]) == Decimal("24.00")

    r = client.delete(f"/api/orders/{order_id}/items/{p2}")
    accepted(r, 202, "order", 3)
    assert money(r.json()["total"]) == Decimal("18.00")
    assert db.execute("select product_id, quantity from order_items where order_id = %s order by line_no",
                      (order_id,)).fetchall() == [(p1, 1), (p3, 2)]

    r = client.post(f"/api/orders/{order_id}/ship", json={"tracking_number": "TRK-1"})
    assert accepted(r, 202, "order", 4)["order_status"] == "shipped"
    r = client.post(f"/api/orders/{order_id}/deliver")
    assert accepted(r, 202, "order", 5)["order_status"] == "delivered"
    assert order_row(db, order_id) == ("delivered", Decimal("18.00"), 5)

    other = create_order(client, customer, [(p1, 2)])["order_id"]
    r = client.post(f"/api/orders/{other}/cancel", json={"reason": "changed my mind"})
    assert accepted(r, 202, "order", 2)["order_status"] == "cancelled"
    r = client.post(f"/api/orders/{create_order(client, customer, [(p1, 2)])['order_id']}/cancel")
    accepted(r, 202, "order", 2)  # no body at all


def test_total_is_exact_and_uses_the_catalogue_price(client, db, wait_for_events):
    customer = create_customer(client)
    a, b, c = create_product(client, price="3.33"), create_product(client, price="0.10"), \
        create_product(client, price="0.07")
    r = client.post("/api/orders", json={"customer_id": customer, "items": [
        {"product_id": a, "quantity": 3, "price": "0.01", "unit_price": 0.01},
        {"product_id": b, "quantity": 1, "unit_price": "0.01"},
        {"product_id": c, "quantity": 1},
        {"product_id": b, "quantity": 2}]})  # repeated product: merged into one line
    body = accepted(r, 201, "order", 1)
    order_id = body["order_id"]
    assert body["total"] == "10.36"  # 3 x 3.33 + 3 x 0.10 + 0.07, which floats get wrong
    assert order_row(db, order_id)[1] == Decimal("10.36")
    assert db.execute("select product_id, quantity, unit_price from order_items where order_id = %s "
                      "order by line_no", (order_id,)).fetchall() == [
        (a, 3, Decimal("3.33")), (b, 3, Decimal("0.10")), (c, 1, Decimal("0.07"))]

    created = wait_for_events(ORDER_EVENTS, order_id, 1)[0].envelope["payload"]
    assert created["total"] == Decimal("10.36")
    assert [(i["product_id"], i["quantity"], i["unit_price"]) for i in created["items"]] == [
        (a, 3, Decimal("3.33")), (b, 3, Decimal("0.10")), (c, 1, Decimal("0.07"))]


def test_ordering_reserves_stock_and_cancelling_releases_it(client, db, wait_for_events):
    customer = create_customer(client)
    p1, p2 = create_product(client, price="5.00", stock=10), create_product(client, price="5.00", stock=5)
    order_id = create_order(client, customer, [(p1, 4), (p2, 1)])["order_id"]
    assert (stock_of(db, p1), stock_of(db, p2)) == (6, 4)

    accepted(client.post(f"/api/orders/{order_id}/items", json={"product_id": p1, "quantity": 2}), 202, "order", 2)
    assert stock_of(db, p1) == 4
    assert db.execute("select quantity from order_items where order_id = %s and product_id = %s",
                      (order_id, p1)).fetchone() == (6,)

    accepted(client.post(f"/api/orders/{order_id}/cancel"), 202, "order", 3)
    assert (stock_of(db, p1), stock_of(db, p2)) == (10, 5)

    changes = [e.envelope for e in wait_for_events(PRODUCT_EVENTS, p1, 4)]
    assert [(e["event_type"], e["payload"].get("delta"), e["payload"].get("reason"), e["payload"]["stock"])
            for e in changes] == [("ProductCreated", None, None, 10), ("StockChanged", -4, "reserved", 6),
                                  ("StockChanged", -2, "reserved", 4), ("StockChanged", 6, "released", 10)]

    # removing a line releases that line's stock
    order_id = create_order(client, customer, [(p1, 2), (p2, 3)])["order_id"]
    accepted(client.delete(f"/api/orders/{order_id}/items/{p1}"), 202, "order", 2)
    assert (stock_of(db, p1), stock_of(db, p2)) == (10, 2)


# ---- validation: 422 and nothing written ---------------------------------------------------------

@pytest.fixture
def shop(client):
    """A customer, a product (10.00, stock 50) and a pending order of 2 of it."""
    customer = create_customer(client)
    product = create_product(client, price="10.00", stock=50)
    order = create_order(client, customer, [(product, 2)])["order_id"]
    return customer, product, order


def scope(shop, **extra: tuple[str, ...]) -> dict:
    """The shop's aggregates (plus `extra` ids of each kind) for nothing_written."""
    customer, product, order = shop
    base = {"customers": (customer,), "products": (product,), "orders": (order,)}
    return {kind: ids + extra.get(kind, ()) for kind, ids in base.items()}


def _line(quantity: int | None = 1) -> dict:
    """An order line of the shop's product (filled in by the test); quantity None leaves it out."""
    return {"product_id": "<product>"} | ({} if quantity is None else {"quantity": quantity})


@pytest.mark.parametrize("body, field", [
    ({}, "items"),
    ({"items": []}, "items"),
    ({"items": [_line(0)]}, "items[0].quantity"),
    ({"items": [_line(1), _line(-3)]}, "items[1].quantity"),
    ({"items": [_line(10_001)]}, "items[0].quantity"),
    ({"items": [_line(None)]}, "items[0].quantity"),
    ({"items": [_line()], "coupon": "FREE"}, "coupon"),
    ({"items": [_line()], "customer_id": None}, "customer_id"),
], ids=["missing-items", "empty-items", "quantity-0", "negative-quantity", "quantity-too-large",
        "missing-quantity", "unknown-field", "null-customer"])
def test_create_order_validation(client, db, shop, body, field):
    customer, product, _ = shop
    body = {"customer_id": customer, **copy.deepcopy(body)}
    for line in body.get("items", []):
        line["product_id"] = product
    with nothing_written(db, **scope(shop)):
        refused(client.post("/api/orders", json=body), 422, "validation_error", field)


def test_add_item_quantity_must_be_positive(client, db, shop):
    _, product, order = shop
    with nothing_written(db, **scope(shop)):
        refused(client.post(f"/api/orders/{order}/items", json={"product_id": product, "quantity": 0}),
                422, "validation_error", "quantity")
        refused(client.post(f"/api/orders/{order}/items", json={"product_id": product, "quantity": 10_001}),
                422, "validation_error", "quantity")


@pytest.mark.parametrize("price", ["12.345", 12.345, "0", "-1.00", "abc"])
def test_product_price_must_be_positive_with_two_decimals(client, db, price):
    name = f"Bad price {uuid.uuid4().hex[:8]}"
    with nothing_written(db, product_names=(name,)):
        refused(client.post("/api/products", json={"name": name, "category": "e2e", "price": price}),
                422, "validation_error", "price")


def test_product_update_validation(client, db):
    product = create_product(client)
    with nothing_written(db, products=(product,)):
        refused(client.patch(f"/api/products/{product}", json={"price": "1.001"}), 422, "validation_error",
                "price")
        refused(client.patch(f"/api/products/{product}", json={}), 422, "validation_error", "body")
        refused(client.patch(f"/api/products/{product}", json={"name": None}), 422, "validation_error", "name")
        refused(client.patch(f"/api/products/{product}", json={"stock": -1}), 422, "validation_error", "stock")
        refused(client.patch(f"/api/products/{product}", json={"colour": "red"}), 422, "validation_error",
                "colour")


@pytest.mark.parametrize("email", ["not-an-email", "a@b", "two@@example.com", "spaces in@example.com"])
def test_customer_email_must_be_valid(client, db, email):
    customer = create_customer(client)
    with nothing_written(db, customers=(customer,), emails=(email,)):
        refused(client.post("/api/customers", json={"name": "X", "email": email}), 422, "validation_error",
                "email")
        refused(client.patch(f"/api/customers/{customer}", json={"email": email}), 422, "validation_error",
                "email")


def test_unknown_json_field_is_refused(client, db):
    email = unique_email()
    with nothing_written(db, emails=(email,)):
        refused(client.post("/api/customers", json={"name": "X", "email": email, "nickname": "x"}),
                422, "validation_error", "nickname")
        refused(client.post("/api/customers", json={"name": "", "email": email}), 422, "validation_error", "name")


@pytest.mark.parametrize("if_match", ["abc", '"v1"', "-1", '"1.0"'])
def test_malformed_if_match_is_refused(client, db, shop, if_match):
    _, _, order = shop
    with nothing_written(db, **scope(shop)):
        refused(client.post(f"/api/orders/{order}/cancel", headers={"If-Match": if_match}), 422,
                "validation_error", "If-Match")


# ---- unknown aggregates: 404 ---------------------------------------------------------------------

def test_unknown_order(client, db, shop):
    _, product, _ = shop
    missing = f"missing-{uuid.uuid4()}"
    with nothing_written(db, **scope(shop, orders=(missing,))):
        for r in (client.post(f"/api/orders/{missing}/cancel"), client.post(f"/api/orders/{missing}/ship"),
                  client.post(f"/api/orders/{missing}/deliver"),
                  client.post(f"/api/orders/{missing}/items", json={"product_id": product, "quantity": 1}),
                  client.delete(f"/api/orders/{missing}/items/{product}")):
            refused(r, 404, "order_not_found")


def test_unknown_product(client, db, shop):
    customer, product, order = shop
    missing = f"missing-{uuid.uuid4()}"
    with nothing_written(db, **scope(shop, products=(missing,))):
        refused(client.patch(f"/api/products/{missing}", json={"price": "1.00"}), 404, "product_not_found")
        refused(client.post(f"/api/orders/{order}/items", json={"product_id": missing, "quantity": 1}),
                404, "product_not_found", "product_id")
        refused(client.post("/api/orders", json={"customer_id": customer, "items": [
            {"product_id": product, "quantity": 2}, {"product_id": missing, "quantity": 1}]}),
            404, "product_not_found", "items[1].product_id")
        refused(client.delete(f"/api/orders/{order}/items/{missing}"), 404, "item_not_found", "product_id")


def test_unknown_customer(client, db, shop):
    _, product, _ = shop
    missing = f"missing-{uuid.uuid4()}"
    with nothing_written(db, **scope(shop, customers=(missing,))):
        refused(client.patch(f"/api/customers/{missing}", json={"name": "X"}), 404, "customer_not_found")
        refused(client.post("/api/orders", json={"customer_id": missing, "items": [
            {"product_id": product, "quantity": 2}]}), 404, "customer_not_found", "customer_id")


# ---- business rules: 409 -------------------------------------------------------------------------

def test_shipped_or_delivered_order_cannot_be_cancelled(client, db, shop):
    _, _, order = shop
    accepted(client.post(f"/api/orders/{order}/ship"), 202, "order", 2)
    with nothing_written(db, **scope(shop)):
        refused(client.post(f"/api/orders/{order}/cancel"), 409, "cannot_cancel_shipped", "status")
    accepted(client.post(f"/api/orders/{order}/deliver"), 202, "order", 3)
    with nothing_written(db, **scope(shop)):
        refused(client.post(f"/api/orders/{order}/cancel"), 409, "cannot_cancel_shipped", "status")
        refused(client.post(f"/api/orders/{order}/ship"), 409, "invalid_transition", "status")
        refused(client.post(f"/api/orders/{order}/deliver"), 409, "invalid_transition", "status")


def test_cancelled_order_is_final(client, db, shop):
    _, product, order = shop
    refused(client.post(f"/api/orders/{order}/deliver"), 409, "invalid_transition", "status")  # still pending
    accepted(client.post(f"/api/orders/{order}/cancel"), 202, "order", 2)
    with nothing_written(db, **scope(shop)):
        refused(client.post(f"/api/orders/{order}/cancel"), 409, "order_already_cancelled", "status")
        refused(client.post(f"/api/orders/{order}/ship"), 409, "invalid_transition", "status")
        refused(client.post(f"/api/orders/{order}/items", json={"product_id": product, "quantity": 1}),
                409, "order_not_pending", "status")


def test_insufficient_stock(client, db):
    customer = create_customer(client)
    scarce, plenty = create_product(client, price="10.00", stock=3), create_product(client, price="10.00")
    with nothing_written(db, customers=(customer,), products=(scarce, plenty)):
        refused(client.post("/api/orders", json={"customer_id": customer, "items": [
            {"product_id": plenty, "quantity": 5}, {"product_id": scarce, "quantity": 4}]}),
            409, "insufficient_stock", "items")
    assert (stock_of(db, scarce), stock_of(db, plenty)) == (3, 100)

    order = create_order(client, customer, [(scarce, 2)])["order_id"]
    with nothing_written(db, customers=(customer,), products=(scarce, plenty), orders=(order,)):
        refused(client.post(f"/api/orders/{order}/items", json={"product_id": scarce, "quantity": 2}),
                409, "insufficient_stock")
    assert stock_of(db, scarce) == 1


def test_below_minimum_total(client, db):
    customer = create_customer(client)
    cheap, dear = create_product(client, price="4.99"), create_product(client, price="9.99")
    with nothing_written(db, customers=(customer,), products=(cheap, dear)):
        refused(client.post("/api/orders", json={"customer_id": customer, "items": [
            {"product_id": cheap, "quantity": 2}]}), 409, "below_minimum_total", "items")  # 9.98
    order = create_order(client, customer, [(cheap, 1), (dear, 1)])["order_id"]  # 14.98
    with nothing_written(db, customers=(customer,), products=(cheap, dear), orders=(order,)):
        refused(client.delete(f"/api/orders/{order}/items/{dear}"), 409, "below_minimum_total")
    assert (stock_of(db, cheap), stock_of(db, dear)) == (99, 99)


def test_duplicate_email_is_case_insensitive(client, db):
    local = f"dup-{uuid.uuid4().hex[:10]}"
    first = create_customer(client, email=f"{local}@Example.com")
    other = create_customer(client)
    with nothing_written(db, customers=(first, other), emails=(f"{local}@example.com",)):
        refused(client.post("/api/customers", json={"name": "Twin", "email": f"  {local.upper()}@EXAMPLE.COM"}),
                409, "duplicate_email", "email")
        refused(client.patch(f"/api/customers/{other}", json={"email": f"{local}@example.COM"}),
                409, "duplicate_email", "email")
    # the customer's own address, in another case, is not a duplicate
    accepted(client.patch(f"/api/customers/{first}", json={"email": f"{local.upper()}@example.com"}),
             202, "customer", 1)


def test_items_of_a_shipped_order_cannot_change(client, db, shop):
    _, product, order = shop
    accepted(client.post(f"/api/orders/{order}/ship"), 202, "order", 2)
    with nothing_written(db, **scope(shop)):
        refused(client.post(f"/api/orders/{order}/items", json={"product_id": product, "quantity": 1}),
                409, "order_not_pending", "status")
        refused(client.delete(f"/api/orders/{order}/items/{product}"), 409, "order_not_pending", "status")


def test_last_item_cannot_be_removed(client, db, shop):
    _, product, order = shop
    with nothing_written(db, **scope(shop)):
        refused(client.delete(f"/api/orders/{order}/items/{product}"), 409, "order_would_be_empty", "product_id")
    assert stock_of(db, product) == 48


# ---- authentication and body size ----------------------------------------------------------------

@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Bearer", "Basic dev-token", "dev-token"])
def test_commands_need_a_valid_bearer_token(gateway, db, authorization):
    email = unique_email()
    headers = {"Authorization": authorization} if authorization is not None else {}
    with httpx.Client(base_url=gateway.url, timeout=10) as anonymous, nothing_written(db, emails=(email,)):
        r = anonymous.post("/api/customers", json={"name": "X", "email": email}, headers=headers)
        refused(r, 401, "unauthorized")
        assert r.headers["WWW-Authenticate"] == "Bearer"
        r = anonymous.post(f"/api/orders/{uuid.uuid4()}/cancel", headers=headers)
        refused(r, 401, "unauthorized")
        assert r.headers["WWW-Authenticate"] == "Bearer"


def _oversized_product(settings, name: str) -> bytes:
    body = json.dumps({"name": name, "category": "e2e", "price": "1.00", "description": "x" * 10})
    return body.replace('"x', '"' + " " * (settings.max_body_bytes + 1) + "x", 1).encode()


def test_oversized_body_is_refused(client, db, settings):
    name = f"Huge {uuid.uuid4().hex[:8]}"
    body = _oversized_product(settings, name)
    assert len(body) > settings.max_body_bytes
    with nothing_written(db, product_names=(name,)):
        r = client.post("/api/products", content=body, headers={"Content-Type": "application/json"})
        refused(r, 413, "payload_too_large")


def test_oversized_chunked_body_is_refused(client, db, settings):
    """Without a Content-Length the limit applies while the body streams in."""
    name = f"Huge {uuid.uuid4().hex[:8]}"
    body = _oversized_product(settings, name)

    def chunks():
        for i in range(0, len(body), 8192):
            yield body[i:i + 8192]

    with nothing_written(db, product_names=(name,)):
        r = client.post("/api/products", content=chunks(), headers={"Content-Type": "application/json",
                                                                    "Idempotency-Key": str(uuid.uuid4())})
        assert "content-length" not in {k.lower() for k in r.request.headers}
        refused(r, 413, "payload_too_large")


def test_body_at_the_limit_is_accepted(client, settings):
    name = f"Big {uuid.uuid4().hex[:8]}"
    body = json.dumps({"name": name, "category": "e2e", "price": "1.00", "description": "d"}).encode()
    body = body[:-1] + b" " * (settings.max_body_bytes - len(body)) + b"}"
    assert len(body) == settings.max_body_bytes
    accepted(client.post("/api/products", content=body, headers={"Content-Type": "application/json"}),
             201, "product", 1)


# ---- idempotency ---------------------------------------------------------------------------------

def test_idempotent_retry_replays_the_response(client, db, wait_for_events, kafka_events):
    customer = create_customer(client)
    product = create_product(client, price="10.00", stock=20)
    key = f"key-{uuid.uuid4()}"
    request = {"customer_id": customer, "items": [{"product_id": product, "quantity": 3}]}

    first = client.post("/api/orders", json=request, headers={"Idempotency-Key": key})
    body = accepted(first, 201, "order", 1)
    for _ in range(2):
        again = client.post("/api/orders", json=request, headers={"Idempotency-Key": key})
        assert again.status_code == 201, again.text
        assert again.json() == body
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.headers["ETag"] == '"1"'

    order_id = body["order_id"]
    assert db.execute("select order_id from orders where customer_id = %s", (customer,)).fetchall() == [(order_id,)]
    assert db.execute("select event_type, sequence_number from outbox where aggregate_id = %s",
                      (order_id,)).fetchall() == [("OrderCreated", 1)]
    assert db.execute("select event_type from outbox where aggregate_id = %s order by sequence_number",
                      (product,)).fetchall() == [("ProductCreated",), ("StockChanged",)]
    assert stock_of(db, product) == 17

    wait_for_events(PRODUCT_EVENTS, product, 2)
    assert len(wait_for_events(ORDER_EVENTS, order_id, 1)) == 1
    time.sleep(0.5)
    assert len(kafka_events(ORDER_EVENTS, order_id)) == 1
    assert len(kafka_events(PRODUCT_EVENTS, product)) == 2


def test_idempotency_key_reused_for_another_request(client, db):
    customer = create_customer(client)
    product = create_product(client, price="10.00")
    key = f"key-{uuid.uuid4()}"
    order = create_order(client, customer, [(product, 1)], headers={"Idempotency-Key": key})["order_id"]
    with nothing_written(db, customers=(customer,), products=(product,), orders=(order,)):
        refused(client.post("/api/orders", json={"customer_id": customer, "items": [
            {"product_id": product, "quantity": 2}]}, headers={"Idempotency-Key": key}),
            422, "idempotency_key_reused", "Idempotency-Key")
        refused(client.post(f"/api/orders/{order}/cancel", headers={"Idempotency-Key": key}),
                422, "idempotency_key_reused", "Idempotency-Key")
    assert order_row(db, order) == ("pending", Decimal("10.00"), 1)


def test_failed_command_does_not_use_up_its_idempotency_key(client, db):
    customer = create_customer(client)
    product = create_product(client, price="10.00", stock=1)
    key = f"key-{uuid.uuid4()}"
    request = {"customer_id": customer, "items": [{"product_id": product, "quantity": 2}]}
    refused(client.post("/api/orders", json=request, headers={"Idempotency-Key": key}), 409, "insufficient_stock")
    accepted(client.patch(f"/api/products/{product}", json={"stock": 5}), 202, "product", 2)
    r = client.post("/api/orders", json=request, headers={"Idempotency-Key": key})
    accepted(r, 201, "order", 1)
    assert stock_of(db, product) == 3


def test_concurrent_duplicates_create_one_order(client, race, db):
    customer = create_customer(client)
    product = create_product(client, price="10.00", stock=100)
    key = f"key-{uuid.uuid4()}"
    request = {"customer_id": customer, "items": [{"product_id": product, "quantity": 1}]}

    responses = race(8, lambda c, i: c.post("/api/orders", json=request, headers={"Idempotency-Key": key}))
    assert [r.status_code for r in responses] == [201] * 8, [r.text for r in responses]
    assert len({r.json()["order_id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 7
    order_id = responses[0].json()["order_id"]
    assert db.execute("select order_id from orders where customer_id = %s", (customer,)).fetchall() == [(order_id,)]
    assert db.execute("select count(*) from outbox where aggregate_id = %s", (order_id,)).fetchone() == (1,)
    assert stock_of(db, product) == 99


# ---- optimistic concurrency (If-Match) -----------------------------------------------------------

def test_stale_if_match_is_refused(client, db, shop):
    customer, product, order = shop
    with nothing_written(db, **scope(shop)):
        refused(client.post(f"/api/orders/{order}/ship", headers={"If-Match": '"2"'}), 412, "version_conflict",
                "If-Match")
        refused(client.patch(f"/api/customers/{customer}", json={"name": "Y"}, headers={"If-Match": '"7"'}),
                412, "version_conflict", "If-Match")
        refused(client.patch(f"/api/products/{product}", json={"price": "2.00"}, headers={"If-Match": '"1"'}),
                412, "version_conflict", "If-Match")  # the order's reservation made it version 2
    r = client.post(f"/api/orders/{order}/items", json={"product_id": product, "quantity": 1},
                    headers={"If-Match": 'W/"1"'})
    accepted(r, 202, "order", 2)
    with nothing_written(db, **scope(shop)):
        refused(client.post(f"/api/orders/{order}/cancel", headers={"If-Match": r.headers["ETag"].replace("2", "1")}),
                412, "version_conflict", "If-Match")
    accepted(client.post(f"/api/orders/{order}/cancel", headers={"If-Match": r.headers["ETag"]}), 202, "order", 3)


@pytest.mark.parametrize("first, second", [("ship", "cancel"), ("cancel", "cancel")])
def test_concurrent_updates_with_if_match_one_wins(client, race, db, wait_for_events, first, second):
    customer = create_customer(client)
    product = create_product(client, price="10.00", stock=10)
    order = create_order(client, customer, [(product, 4)])["order_id"]

    responses = race(2, lambda c, i: c.post(f"/api/orders/{order}/{(first, second)[i]}", headers={"If-Match": '"1"'}))
    assert sorted(r.status_code for r in responses) == [202, 412], [r.text for r in responses]
    refused(next(r for r in responses if r.status_code == 412), 412, "version_conflict", "If-Match")
    winner = next(r for r in responses if r.status_code == 202).json()
    assert winner["version"] == 2
    status, _, version = order_row(db, order)
    assert (status, version) == (winner["order_status"], 2)
    assert stock_of(db, product) == (10 if status == "cancelled" else 6)  # released at most once
    assert db.execute("select sequence_number from outbox where aggregate_id = %s order by 1",
                      (order,)).fetchall() == [(1,), (2,)]
    assert [e.envelope["sequence_number"] for e in wait_for_events(ORDER_EVENTS, order, 2)] == [1, 2]


def test_concurrent_cancels_release_stock_once(client, race, db):
    customer = create_customer(client)
    product = create_product(client, price="10.00", stock=10)
    order = create_order(client, customer, [(product, 4)])["order_id"]

    responses = race(4, lambda c, i: c.post(f"/api/orders/{order}/cancel"))
    assert sorted(r.status_code for r in responses) == [202, 409, 409, 409], [r.text for r in responses]
    for r in responses:
        if r.status_code == 409:
            refused(r, 409, "order_already_cancelled")
    assert stock_of(db, product) == 10
    assert order_row(db, order)[2] == 2


def test_concurrent_registrations_of_one_email(race, db):
    email = unique_email("race")
    responses = race(4, lambda c, i: c.post("/api/customers", json={"name": f"Racer {i}",
                                                                     "email": email if i % 2 else email.upper()}))
    assert sorted(r.status_code for r in responses) == [201, 409, 409, 409], [r.text for r in responses]
    for r in responses:
        if r.status_code == 409:
            refused(r, 409, "duplicate_email", "email")
    assert db.execute("select count(*) from customers where email = %s", (email.lower(),)).fetchone() == (1,)


def test_concurrent_email_changes_to_one_address(client, race, db):
    email = unique_email("race")
    customers = [create_customer(client) for _ in range(3)]
    responses = race(3, lambda c, i: c.patch(f"/api/customers/{customers[i]}", json={"email": email}))
    assert sorted(r.status_code for r in responses) == [202, 409, 409], [r.text for r in responses]
    for r in responses:
        if r.status_code == 409:
            refused(r, 409, "duplicate_email", "email")
    assert db.execute("select count(*) from customers where email = %s", (email.lower(),)).fetchone() == (1,)


def test_concurrent_orders_never_oversell(client, race, db):
    customer = create_customer(client)
    scarce = create_product(client, price="10.00", stock=5)
    filler = create_product(client, price="1.00", stock=100)
    request = {"customer_id": customer, "items": [{"product_id": filler, "quantity": 1},
                                                  {"product_id": scarce, "quantity": 1}]}

    responses = race(8, lambda c, i: c.post("/api/orders", json=request))
    assert sorted(r.status_code for r in responses) == [201] * 5 + [409] * 3, [r.text for r in responses]
    assert (stock_of(db, scarce), stock_of(db, filler)) == (0, 95)
    assert db.execute("select count(*) from orders where customer_id = %s", (customer,)).fetchone() == (5,)


# ---- events ---------------------------------------------------------------------------------------

def test_order_events_are_gapless_ordered_and_registered(client, db, settings, wait_for_events, kafka_events):
    customer = create_customer(client)
    p1, p2, p3 = (create_product(client, price="6.00") for _ in range(3))
    correlation = f"corr-{uuid.uuid4()}"
    order_id = create_order(client, customer, [(p1, 1), (p2, 1)],
                            headers={"X-Correlation-Id": correlation})["order_id"]
    accepted(client.post(f"/api/orders/{order_id}/items", json={"product_id": p3, "quantity": 2}), 202, "order", 2)
    accepted(client.delete(f"/api/orders/{order_id}/items/{p2}"), 202, "order", 3)
    accepted(client.post(f"/api/orders/{order_id}/ship", json={"tracking_number": "TRK-9"}), 202, "order", 4)
    accepted(client.post(f"/api/orders/{order_id}/deliver"), 202, "order", 5)

    events = wait_for_events(ORDER_EVENTS, order_id, 5)
    envelopes = [e.envelope for e in events]
    assert len(events) == 5, [e.envelope["event_type"] for e in events]
    assert [e["sequence_number"] for e in envelopes] == [1, 2, 3, 4, 5]
    assert [e["event_type"] for e in envelopes] == ["OrderCreated", "ItemAdded", "ItemRemoved", "OrderShipped",
                                                     "OrderDelivered"]
    assert len({e.partition for e in events}) == 1
    assert [e.offset for e in events] == sorted(e.offset for e in events)
    assert all(e.key == order_id.encode() and env["aggregate_id"] == order_id for e, env in zip(events, envelopes))
    assert all(e.headers["event_type"] == env["event_type"].encode() and
               e.headers["event_id"] == env["event_id"].encode() and
               e.headers["sequence_number"] == str(env["sequence_number"]).encode()
               for e, env in zip(events, envelopes))

    # the value is framed with the schema the registry has for the topic, and decodes with it
    client_registry = registry.registry_client(settings)
    latest = client_registry.get_latest_version(f"{ORDER_EVENTS}-value").schema_id
    registered = fastavro.parse_schema(json.loads(client_registry.get_schema(latest).schema_str))
    for e, env in zip(events, envelopes):
        assert struct.unpack(">bI", e.value[:5]) == (0, latest)
        assert fastavro.schemaless_reader(io.BytesIO(e.value[5:]), registered) == env

    # tracing: the first command's correlation id is the client's, every command has its own causation id
    assert envelopes[0]["correlation_id"] == correlation
    assert all(env["correlation_id"] and env["causation_id"] for env in envelopes)
    assert len({env["causation_id"] for env in envelopes}) == 5
    assert correlation not in {env["causation_id"] for env in envelopes}
    assert all(isinstance(env["occurred_at"], datetime) and env["occurred_at"].tzinfo for env in envelopes)
    assert [env["occurred_at"] for env in envelopes] == sorted(env["occurred_at"] for env in envelopes)

    created, added, removed, shipped, _ = (env["payload"] for env in envelopes)
    assert created["customer_id"] == customer and created["status"] == "pending"
    assert created["total"] == Decimal("12.00")
    assert [(i["product_id"], i["quantity"], i["unit_price"]) for i in created["items"]] == [
        (p1, 1, Decimal("6.00")), (p2, 1, Decimal("6.00"))]
    assert (added["product_id"], added["quantity"], added["line_quantity"], added["total"]) == \
        (p3, 2, 2, Decimal("24.00"))
    assert (removed["product_id"], removed["quantity"], removed["total"]) == (p2, 1, Decimal("18.00"))
    assert shipped["tracking_number"] == "TRK-9"

    # stock changes: gapless per product, on one partition, caused by the same command as the order event
    product_events = {p: wait_for_events(PRODUCT_EVENTS, p, n) for p, n in ((p1, 2), (p2, 3), (p3, 2))}
    for product, found in product_events.items():
        assert [e.envelope["sequence_number"] for e in found] == list(range(1, len(found) + 1)), product
        assert len({e.partition for e in found}) == 1
        assert all(e.key == product.encode() for e in found)
    assert [(e.envelope["payload"]["delta"], e.envelope["payload"]["reason"]) for e in product_events[p2][1:]] == \
        [(-1, "reserved"), (1, "released")]
    assert product_events[p1][1].envelope["causation_id"] == envelopes[0]["causation_id"]
    assert product_events[p1][1].envelope["correlation_id"] == correlation
    assert product_events[p3][1].envelope["causation_id"] == envelopes[1]["causation_id"]
    assert product_events[p2][2].envelope["causation_id"] == envelopes[2]["causation_id"]

    all_ids = [e.envelope["event_id"] for e in events] + \
        [e.envelope["event_id"] for found in product_events.values() for e in found]
    assert len(all_ids) == len(set(all_ids)) == 12
    assert {str(r[0]) for r in db.execute("select event_id from outbox where aggregate_id = any(%s)",
                                          ([order_id, p1, p2, p3],))} == set(all_ids)
    assert [r[0] for r in wait_published(db, order_id, 5)] == [1, 2, 3, 4, 5]


def test_customer_events(client, wait_for_events):
    email = unique_email()
    customer = create_customer(client, name="Grace", email=email)
    accepted(client.patch(f"/api/customers/{customer}", json={"name": "Grace Hopper"}), 202, "customer", 2)
    events = wait_for_events(CUSTOMER_EVENTS, customer, 2)
    assert [(e.envelope["sequence_number"], e.envelope["event_type"], e.envelope["payload"]) for e in events] == [
        (1, "CustomerRegistered", {"name": "Grace", "email": email.lower()}),
        (2, "CustomerUpdated", {"name": "Grace Hopper", "email": email.lower()})]
    assert len({e.partition for e in events}) == 1


# ---- the outbox relay ----------------------------------------------------------------------------

def test_outbox_survives_a_crash_and_is_published_after_restart(gateway, spawn_gateway, token, db, settings,
                                                                 kafka_events, wait_for_events):
    """Commands committed while no relay runs stay in the outbox (unpublished) through a crash of the
    process that wrote them, and the next relay publishes them."""
    gateway.stop()
    end = deadline(10)
    while relay_lock_holder(settings) is not None:
        assert time.monotonic() < end, f"relay lock still held by {relay_lock_holder(settings)}: another " \
                                       f"gateway with a relay is using this write model"
        time.sleep(0.1)

    writer = spawn_gateway("no-relay", OUTBOX_RELAY_ENABLED="false")
    assert writer.wait_ready(leader=False)["relay_leader"] is False
    with make_client(writer.url, token) as c:
        customer = create_customer(c)
        product = create_product(c, price="10.00", stock=5)
        order_id = create_order(c, customer, [(product, 2)])["order_id"]
    aggregates = {CUSTOMER_EVENTS: (customer, 1), PRODUCT_EVENTS: (product, 2), ORDER_EVENTS: (order_id, 1)}

    rows = db.execute("select aggregate_id, sequence_number, published_at from outbox where aggregate_id = any(%s) "
                      "order by id", ([customer, product, order_id],)).fetchall()
    assert [(a, s) for a, s, _ in rows] == [(customer, 1), (product, 1), (order_id, 1), (product, 2)]
    assert all(published is None for _, _, published in rows)
    time.sleep(2.0)  # longer than a relay's poll interval
    for topic, (aggregate, _) in aggregates.items():
        assert kafka_events(topic, aggregate) == [], f"{topic} has events of {aggregate} with no relay running"

    writer.kill()
    gateway.start()
    gateway.wait_ready(leader=True)
    for topic, (aggregate, n) in aggregates.items():
        found = wait_for_events(topic, aggregate, n)
        assert [e.envelope["sequence_number"] for e in found] == list(range(1, n + 1))
    for aggregate, n in ((customer, 1), (product, 2), (order_id, 1)):
        wait_published(db, aggregate, n)


def test_two_gateways_share_one_relay(gateway, spawn_gateway, token, db, settings, wait_for_events, kafka_events):
    second = spawn_gateway("second")
    second.wait_ready(leader=False)
    assert gateway.readyz()["relay_leader"] is True
    assert second.readyz()["relay_leader"] is False
    assert db.execute("select count(*) from pg_locks where locktype = 'advisory' and granted and objsubid = 1 "
                      "and ((classid::bigint << 32) | objid::bigint) = %s",
                      (RELAY_LOCK_KEY,)).fetchone() == (1,)

    with make_client(gateway.url, token) as a, make_client(second.url, token) as b:
        customers = [create_customer(a), create_customer(b)]
        products = [create_product(b, price="10.00", stock=10), create_product(a, price="10.00", stock=10)]
        orders = [create_order(a, customers[0], [(products[0], 1), (products[1], 1)])["order_id"],
                  create_order(b, customers[1], [(products[0], 2)])["order_id"]]
        accepted(b.post(f"/api/orders/{orders[0]}/ship"), 202, "order", 2)
        accepted(a.post(f"/api/orders/{orders[1]}/cancel"), 202, "order", 2)
        accepted(b.patch(f"/api/customers/{customers[0]}", json={"name": "Renamed"}), 202, "customer", 2)

    expected = {CUSTOMER_EVENTS: [(customers[0], 2), (customers[1], 1)],
                PRODUCT_EVENTS: [(products[0], 4), (products[1], 2)],  # created, -1, -2, +2 / created, -1
                ORDER_EVENTS: [(orders[0], 2), (orders[1], 2)]}
    seen = Counter()
    for topic, aggregates in expected.items():
        for aggregate, n in aggregates:
            wait_for_events(topic, aggregate, n)
    time.sleep(1.0)  # a duplicate would arrive right behind the originals
    for topic, aggregates in expected.items():
        for aggregate, n in aggregates:
            found = kafka_events(topic, aggregate)
            assert [e.envelope["sequence_number"] for e in found] == list(range(1, n + 1)), (topic, aggregate)
            seen.update(e.envelope["event_id"] for e in found)
    assert seen and set(seen.values()) == {1}

    # failover: when the leader stops, the other gateway takes the relay over
    gateway.stop()
    second.wait_ready(leader=True, timeout=15)
    with make_client(second.url, token) as b:
        customer = create_customer(b)
    assert len(wait_for_events(CUSTOMER_EVENTS, customer, 1)) == 1
    second.stop()


# ---- operations ----------------------------------------------------------------------------------

def test_metrics(client, db, wait_for_events):
    customer = create_customer(client)
    refused(client.patch(f"/api/customers/{customer}", json={"email": "nope"}), 422, "validation_error")
    wait_for_events(CUSTOMER_EVENTS, customer, 1)
    wait_published(db, customer, 1)
    end = deadline(5)
    while True:
        r = client.get("/metrics", follow_redirects=True)
        assert r.status_code == 200
        samples = {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in r.text.splitlines()
                   if ln and not ln.startswith("#")}
        if samples.get("outbox_publish_lag_seconds_count", 0) >= 1 or time.monotonic() > end:
            break
        time.sleep(0.1)
    assert samples['command_duration_seconds_count{command="RegisterCustomer",outcome="201"}'] >= 1
    assert samples['command_duration_seconds_count{command="UpdateCustomer",outcome="422"}'] >= 1
    assert any(k.startswith("command_duration_seconds_bucket{") for k in samples)
    assert samples["outbox_publish_lag_seconds_count"] >= 1
    assert any(k.startswith("outbox_publish_lag_seconds_bucket{") for k in samples)
    assert "outbox_backlog" in samples


def test_openapi_lists_every_command(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    operations = {(method.upper(), path) for path, ops in paths.items() for method in ops}
    assert operations >= {
        ("POST", "/api/customers"), ("PATCH", "/api/customers/{customer_id}"),
        ("POST", "/api/products"), ("PATCH", "/api/products/{product_id}"),
        ("POST", "/api/orders"), ("POST", "/api/orders/{order_id}/items"),
        ("DELETE", "/api/orders/{order_id}/items/{product_id}"), ("POST", "/api/orders/{order_id}/cancel"),
        ("POST", "/api/orders/{order_id}/ship"), ("POST", "/api/orders/{order_id}/deliver")}


def test_every_error_a_command_answers_is_declared_in_its_openapi_document(client, gateway):
    """Clients generated from the document must know each status: provoke each error on a real gateway and
    find it, with the error schema, among the operation's declared responses."""
    spec = client.get("/openapi.json").json()
    customer = create_customer(client)
    product = create_product(client, price="10.00")
    order = create_order(client, customer, [(product, 1)])["order_id"]
    assert client.post(f"/api/orders/{order}/cancel").status_code == 202
    provoked = [
        ("post", "/api/orders", httpx.post(f"{gateway.url}/api/orders", json={}, timeout=10)),  # no token
        ("post", "/api/orders/{order_id}/ship", client.post(f"/api/orders/{uuid.uuid4()}/ship")),
        ("post", "/api/orders/{order_id}/ship", client.post(f"/api/orders/{order}/ship")),  # cancelled
        ("post", "/api/orders/{order_id}/items", client.post(f"/api/orders/{order}/items", headers={
            "If-Match": '"7"'}, json={"product_id": product, "quantity": 1})),
        ("post", "/api/products", client.post("/api/products", content=b"x" * 70_000,
                                              headers={"Content-Type": "application/json"})),
        ("post", "/api/products", client.post("/api/products", content=b"{not json",
                                              headers={"Content-Type": "application/json"})),
        ("post", "/api/customers", client.post("/api/customers", json={"name": "", "email": "x"})),
    ]
    seen = set()
    for method, path, r in provoked:
        declared = spec["paths"][path][method]["responses"]
        assert str(r.status_code) in declared, f"{method.upper()} {path} answered {r.status_code}: {r.text[:200]}"
        assert declared[str(r.status_code)]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
        assert {"code", "message"} <= set(r.json()), r.text
        seen.add(r.status_code)
    assert seen == {401, 404, 409, 412, 413, 422}, seen  # the body that is not JSON is a 422 validation error
