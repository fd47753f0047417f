"""Who may call what, through real HTTP clients: every endpoint of both APIs × every kind of caller
(no token, a wrongly signed one, an expired one, the owning customer, another customer, an admin, an
operator) gets the status the README's security section promises. A refused command writes nothing."""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import jwt
import psycopg
import pytest

from app.http.identity import issue_token
from app.settings import Settings
from domain.access import Role
from tests.e2e.conftest import (Gateway, create_customer, create_order, create_product, customer_token,
                                make_client, nothing_written)

CALLERS = ("none", "bad signature", "expired", "owner", "other customer", "admin", "operator")
ANY_TOKEN_401 = {"none": 401, "bad signature": 401, "expired": 401}


def expect(owner: int, other: int, admin: int, operator: int, none: int = 401) -> dict[str, int]:
    return {**ANY_TOKEN_401, "none": none, "owner": owner, "other customer": other, "admin": admin,
            "operator": operator}


@dataclass
class World:
    """A customer (`owner`) with orders, a product, and a token of every kind."""

    gateway: str
    query: str
    query_without_kafka: str
    admin: httpx.Client
    owner: str
    product: str
    spare: str
    tokens: dict[str, str | None]

    def order(self, status: str = "pending") -> str:
        order_id = create_order(self.admin, self.owner, [(self.product, 1), (self.spare, 1)])["order_id"]
        if status in ("shipped", "delivered"):
            assert self.admin.post(f"/api/orders/{order_id}/ship", json={}).status_code == 202
        if status == "delivered":
            assert self.admin.post(f"/api/orders/{order_id}/deliver").status_code == 202
        return order_id


@pytest.fixture(scope="module")
def world(session_gateway: Gateway, spawn_query_api, settings: Settings, token: str) -> Iterator[World]:
    gateway = session_gateway
    if not gateway.running:
        gateway.start()
    gateway.wait_ready(leader=True)
    query = spawn_query_api("authz")
    # The operations data behind the same authorization, with Kafka out of reach: an authorized caller gets
    # past it to the one-line 503 (its 200 with data is tests/e2e/test_dashboard_page.py's)
    without_kafka = spawn_query_api("authz-nokafka", ready_path="/healthz", KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
                                    CONNECT_TIMEOUT_S="1")
    admin = make_client(gateway.url, token)
    owner = create_customer(admin, name="Owner")
    product = create_product(admin, stock=10_000)
    spare = create_product(admin, stock=10_000)
    now = int(time.time())
    tokens: dict[str, str | None] = {
        "none": None,
        "bad signature": jwt.encode({"sub": "x", "roles": ["admin"], "iss": settings.auth_issuer,
                                     "aud": settings.auth_audience, "exp": now + 600}, "z" * 40, algorithm="HS256"),
        "expired": issue_token(settings, [Role.admin], subject="late", ttl_s=1, now=now - 3600),
        "owner": customer_token(settings, owner),
        "other customer": customer_token(settings, f"someone-{uuid.uuid4().hex[:8]}"),
        "admin": token,
        "operator": issue_token(settings, [Role.operator], subject="ops"),
    }
    yield World(gateway.url, query.base_url or "", without_kafka.base_url or "", admin, owner, product, spare, tokens)
    admin.close()


Call = Callable[[World, httpx.Client], httpx.Response]


def command_cases() -> list[tuple[str, Call, dict[str, int]]]:
    """(endpoint, the call, status per caller); each call makes its own aggregate where it changes one."""
    def new_email() -> str:
        return f"authz-{uuid.uuid4().hex[:10]}@example.com"

    return [
        ("POST /api/customers", lambda w, c: c.post("/api/customers", json={"name": "N", "email": new_email()}),
         expect(owner=403, other=403, admin=201, operator=403)),
        ("PATCH /api/customers/{id}", lambda w, c: c.patch(f"/api/customers/{w.owner}", json={"name": "Renamed"}),
         expect(owner=202, other=403, admin=202, operator=403)),
        ("POST /api/products",
         lambda w, c: c.post("/api/products", json={"name": "P", "category": "c", "price": "1.00"}),
         expect(owner=403, other=403, admin=201, operator=403)),
        ("PATCH /api/products/{id}", lambda w, c: c.patch(f"/api/products/{w.spare}", json={"description": "d"}),
         expect(owner=403, other=403, admin=202, operator=403)),
        ("POST /api/orders", lambda w, c: c.post("/api/orders", json={
            "customer_id": w.owner, "items": [{"product_id": w.product, "quantity": 1}]}),
         expect(owner=201, other=403, admin=201, operator=403)),
        ("POST /api/orders/{id}/items", lambda w, c: c.post(f"/api/orders/{w.order()}/items", json={
            "product_id": w.product, "quantity": 1}), expect(owner=202, other=403, admin=202, operator=403)),
        ("DELETE /api/orders/{id}/items/{pid}", lambda w, c: c.delete(f"/api/orders/{w.order()}/items/{w.spare}"),
         expect(owner=202, other=403, admin=202, operator=403)),
        ("POST /api/orders/{id}/cancel", lambda w, c: c.post(f"/api/orders/{w.order()}/cancel", json={}),
         expect(owner=202, other=403, admin=202, operator=403)),
        ("POST /api/orders/{id}/ship", lambda w, c: c.post(f"/api/orders/{w.order()}/ship", json={}),
         expect(owner=403, other=403, admin=202, operator=403)),
        ("POST /api/orders/{id}/deliver", lambda w, c: c.post(f"/api/orders/{w.order('shipped')}/deliver"),
         expect(owner=403, other=403, admin=202, operator=403)),
        ("GET gateway /metrics", lambda w, c: c.get("/metrics"), expect(owner=403, other=403, admin=200, operator=200)),
    ]


def query_cases() -> list[tuple[str, Call, dict[str, int]]]:
    public = {"none": 200, "bad signature": 401, "expired": 401, "owner": 200, "other customer": 200, "admin": 200,
              "operator": 200}
    probe = dict.fromkeys(CALLERS, 200)
    return [
        ("GET /api/orders/{id}", lambda w, c: c.get(f"/api/orders/{w.order()}"),
         expect(owner=200, other=403, admin=200, operator=403)),
        ("GET /api/customers/{id}/orders", lambda w, c: c.get(f"/api/customers/{w.owner}/orders"),
         expect(owner=200, other=403, admin=200, operator=403)),
        ("GET /api/products/search", lambda w, c: c.get("/api/products/search", params={"q": "x"}), public),
        ("GET /api/dashboard/sales", lambda w, c: c.get("/api/dashboard/sales"),
         expect(owner=403, other=403, admin=200, operator=200)),
        ("GET /api/ops/pipeline (Kafka out of reach)", lambda w, c: c.get(f"{w.query_without_kafka}/api/ops/pipeline"),
         expect(owner=403, other=403, admin=503, operator=503)),
        ("GET query /metrics", lambda w, c: c.get("/metrics"), expect(owner=403, other=403, admin=200, operator=200)),
        ("GET /dashboard (the page holds no figures)", lambda w, c: c.get("/dashboard"), probe),
        ("GET /healthz", lambda w, c: c.get("/healthz"), probe),
        ("GET /openapi.json", lambda w, c: c.get("/openapi.json"), probe),
    ]


def run_matrix(world: World, base_url: str, cases: list[tuple[str, Call, dict[str, int]]]) -> list[str]:
    wrong = []
    for caller in CALLERS:
        with make_client(base_url, world.tokens[caller]) as client:
            for endpoint, call, statuses in cases:
                r = call(world, client)
                if r.status_code != statuses[caller]:
                    wrong.append(f"{endpoint} as {caller}: {r.status_code}, expected {statuses[caller]}: "
                                 f"{r.text[:160]}")
                elif r.status_code in (401, 403):
                    body = r.json()
                    want = "unauthorized" if r.status_code == 401 else ("forbidden", "not_owner")
                    if body.get("code") not in want or not body.get("message"):
                        wrong.append(f"{endpoint} as {caller}: error body {body}")
                    if r.status_code == 401 and r.headers.get("WWW-Authenticate") != "Bearer":
                        wrong.append(f"{endpoint} as {caller}: 401 without WWW-Authenticate: Bearer")
    return wrong


def test_every_command_endpoint_by_every_kind_of_caller(world: World):
    assert run_matrix(world, world.gateway, command_cases()) == []


def test_every_query_endpoint_by_every_kind_of_caller(world: World):
    assert run_matrix(world, world.query, query_cases()) == []


def test_refused_commands_write_nothing(world: World, db: psycopg.Connection):
    """Another customer's cancel, add and order, and a customer's shipping: 403, and not a row changes."""
    order = world.order()
    with make_client(world.gateway, world.tokens["other customer"]) as other, \
            make_client(world.gateway, world.tokens["owner"]) as owner, \
            nothing_written(db, customers=(world.owner,), orders=(order,), products=(world.product,)):
        assert other.post(f"/api/orders/{order}/cancel", json={}).status_code == 403
        assert other.post(f"/api/orders/{order}/items", json={"product_id": world.product, "quantity": 5}
                          ).status_code == 403
        assert other.post("/api/orders", json={"customer_id": world.owner, "items": [
            {"product_id": world.product, "quantity": 1}]}).status_code == 403
        assert owner.post(f"/api/orders/{order}/ship", json={}).status_code == 403


def test_an_idempotency_key_of_one_caller_never_replays_to_another(world: World):
    key = f"authz-{uuid.uuid4().hex}"
    body = {"customer_id": world.owner, "items": [{"product_id": world.product, "quantity": 1}]}
    with make_client(world.gateway, world.tokens["owner"]) as owner:
        first = owner.post("/api/orders", json=body, headers={"Idempotency-Key": key})
        assert first.status_code == 201, first.text
    with make_client(world.gateway, world.tokens["admin"]) as admin:
        again = admin.post("/api/orders", json=body, headers={"Idempotency-Key": key})
    assert again.status_code == 422 and again.json()["code"] == "idempotency_key_reused", again.text
