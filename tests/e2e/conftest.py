"""End-to-end fixtures: the write model set up with `cqrs setup`, real gateway processes driven over
HTTP, the write model read back with psycopg, and the events read back from Kafka.

The gateways share the stack's write-model database, so a relay running outside these tests would
compete for the relay lock; the gateway fixture fails with the lock holder's address in that case.
"""
from __future__ import annotations

import contextlib

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from app.operations import processes
from app.operations.processes import free_port  # noqa: F401  (the tests' import of it)
from app.commands.relay import RELAY_LOCK_KEY
from agents.read_model_versions import ServingRecord
from domain.read_models import READ_MODEL_VERSIONS, OrderCollections
from app.settings import Settings
from app.http.identity import issue_token
from domain.access import Role
from app.operations.setup import prepare_event_codecs
from connectors import kafka, postgres
from schemas.codec import EventCodec
from tests.conftest import ROOT

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
EVENT_TIMEOUT_S = 15.0


@pytest.fixture(autouse=True)
def _needs_stack(stack: Settings) -> Settings:
    """Every end-to-end test runs against the real local stack."""
    return stack


# ---- processes ------------------------------------------------------------------------------------

def wait_until(what: str, check, timeout: float = 60.0):
    """Poll `check` every 0.2 s until it returns something truthy (returned); fail after `timeout`."""
    end = deadline(timeout)
    last = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    pytest.fail(f"{what} not visible after {timeout}s (last: {last!r})", pytrace=False)


def deadline(seconds: float) -> float:
    return time.monotonic() + seconds


class Gateway:
    """One `cqrs gateway` subprocess on a fixed port; can be stopped, killed and started again."""

    def __init__(self, name: str, log_dir: Path, port: int | None = None, env: dict[str, str] | None = None):
        self.name = name
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = log_dir / f"gateway-{name}-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Gateway:
        assert not self.running, f"gateway {self.name} is already running"
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {time.strftime('%H:%M:%S')}\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "gateway", "--port", str(self.port)], cwd=ROOT, env=self.env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def readyz(self, timeout: float = 2.0) -> dict | None:
        try:
            r = httpx.get(f"{self.url}/readyz", timeout=timeout)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def wait_ready(self, *, leader: bool | None = True, timeout: float = READY_TIMEOUT_S) -> dict:
        """Until /readyz answers 200 (and relay_leader equals `leader`, unless None); bounded."""
        end = deadline(timeout)
        last = None
        while time.monotonic() < end:
            if not self.running:
                pytest.fail(f"gateway {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}",
                            pytrace=False)
            last = self.readyz()
            if last is not None and (leader is None or last.get("relay_leader") is leader):
                return last
            time.sleep(0.1)
        holder = relay_lock_holder(Settings())
        pytest.fail(f"gateway {self.name} not ready (leader={leader}) within {timeout}s; last /readyz: {last}; "
                    f"relay lock held by {holder or 'nobody'}\n{self.log_tail()}", pytrace=False)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (graceful: the relay finishes and releases its lock), SIGKILL if it takes too long."""
        if self.proc is None:
            return None
        return processes.stop_process(self.proc, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing shuts down cleanly."""
        if self.running:
            self.proc.kill()
            self.proc.wait(5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def relay_lock_holder(settings: Settings) -> str | None:
    """The client address and backend pid of the session holding the relay advisory lock, if any."""
    with postgres.connect(settings, autocommit=True) as conn:
        row = conn.execute(
            "select a.client_addr::text || ':' || a.client_port || ' (backend ' || a.pid || ')' "
            "from pg_locks l join pg_stat_activity a using (pid) where l.locktype = 'advisory' and l.granted "
            "and l.objsubid = 1 and l.database = (select oid from pg_database where datname = current_database()) "
            "and ((l.classid::bigint << 32) | l.objid::bigint) = %s", (RELAY_LOCK_KEY,)).fetchone()
    return row[0] if row else None


@pytest.fixture(scope="session")
def setup_done(stack: Settings) -> None:
    """`cqrs setup`: migrate the write model, create the topics, register the schemas."""
    proc = subprocess.run([sys.executable, "-m", "app.cli", "setup"], cwd=ROOT, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, f"cqrs setup failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="session")
def gateway_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateways")


@pytest.fixture(scope="session")
def session_gateway(setup_done: None, gateway_logs: Path) -> Iterator[Gateway]:
    """The main gateway (with its relay). Tests may stop it; `gateway` starts it again."""
    gw = Gateway("main", gateway_logs)
    gw.start()
    try:
        gw.wait_ready(leader=True)
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def gateway(session_gateway: Gateway) -> Gateway:
    """The main gateway, running and leading the relay (restarted if an earlier test stopped it)."""
    if not session_gateway.running:
        session_gateway.start()
    session_gateway.wait_ready(leader=True)
    return session_gateway


@contextlib.contextmanager
def gateway_spawner(log_dir: Path) -> Iterator:
    """spawn(name, **env) starts extra gateways; all of them are stopped when the block ends."""
    started: list[Gateway] = []

    def spawn(name: str, **env: str) -> Gateway:
        gw = Gateway(name, log_dir, env=env).start()
        started.append(gw)
        return gw

    try:
        yield spawn
    finally:
        for gw in started:
            gw.stop()


@pytest.fixture
def spawn_gateway(setup_done: None, gateway_logs: Path) -> Iterator:
    """Start extra gateways for one test; all of them are stopped when it ends."""
    with gateway_spawner(gateway_logs) as spawn:
        yield spawn


@pytest.fixture(scope="module")
def spawn_query_api(setup_done: None, gateway_logs: Path) -> Iterator:
    """spawn_query_api(name, ready_path="/readyz", **env) -> a running `cqrs query-api` process on a free
    port (`base_url`), once `ready_path` answered 200; all of them are stopped when the module's tests end."""
    started: list[processes.AppProcess] = []

    def spawn(name: str = "query-api", ready_path: str = "/readyz", **env: str) -> processes.AppProcess:
        app = processes.start(f"query-api-{name}", ["query-api"], log_dir=gateway_logs, port=free_port(),
                              env={"PYTHONUNBUFFERED": "1", **env}, ready_path=ready_path, timeout=READY_TIMEOUT_S)
        started.append(app)
        return app

    yield spawn
    for app in started:
        app.stop(STOP_TIMEOUT_S)


# ---- HTTP -----------------------------------------------------------------------------------------

TEST_TOKEN_TTL_S = 12 * 3600


@pytest.fixture(scope="session")
def token(settings: Settings) -> str:
    """An admin's token: the tests' default caller of both APIs (authorization has its own tests)."""
    return issue_token(settings, [Role.admin], subject="e2e-admin", ttl_s=TEST_TOKEN_TTL_S)


def customer_token(settings: Settings, customer_id: str) -> str:
    return issue_token(settings, [Role.customer], subject=f"customer:{customer_id}", customer_id=customer_id,
                       ttl_s=TEST_TOKEN_TTL_S)


def make_client(base_url: str, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=base_url, headers=headers, timeout=15.0)


@pytest.fixture
def client(gateway: Gateway, token: str) -> Iterator[httpx.Client]:
    with make_client(gateway.url, token) as c:
        yield c


def unique_email(prefix: str = "e2e") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@Example.COM"


def create_customer(client: httpx.Client, name: str = "E2E Customer", email: str | None = None) -> str:
    r = client.post("/api/customers", json={"name": name, "email": email or unique_email()})
    assert r.status_code == 201, r.text
    return r.json()["customer_id"]


def create_product(client: httpx.Client, price: str = "10.00", stock: int = 100, **fields: Any) -> str:
    body = {"name": f"E2E product {uuid.uuid4().hex[:8]}", "category": "e2e", "price": price, "stock": stock,
            **fields}
    r = client.post("/api/products", json=body)
    assert r.status_code == 201, r.text
    return r.json()["product_id"]


def create_order(client: httpx.Client, customer_id: str, items: list[tuple[str, int]], **kwargs: Any) -> dict:
    r = client.post("/api/orders", json={"customer_id": customer_id,
                                         "items": [{"product_id": p, "quantity": q} for p, q in items]}, **kwargs)
    assert r.status_code == 201, r.text
    return r.json()


# ---- write model ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def db(setup_done: None, settings: Settings) -> Iterator[psycopg.Connection]:
    with postgres.connect(settings, autocommit=True) as conn:
        yield conn


def stock_of(db: psycopg.Connection, product_id: str) -> int | None:
    row = db.execute("select available from stock where product_id = %s", (product_id,)).fetchone()
    return row[0] if row else None


def write_model_state(db: psycopg.Connection, *, customers: tuple[str, ...] = (), products: tuple[str, ...] = (),
                      orders: tuple[str, ...] = (), emails: tuple[str, ...] = (),
                      product_names: tuple[str, ...] = ()) -> dict:
    """Everything the write model holds about these aggregates: rows, versions, stock and outbox events
    (including orders of these customers and products with these names, which a failed command
    must not have created)."""
    customers, products, orders = list(customers), list(products), list(orders)
    emails = [e.strip().lower() for e in emails]
    state: dict[str, Any] = {}
    state["customers"] = db.execute(
        "select customer_id, name, email, version from customers where customer_id = any(%s) or email = any(%s) "
        "order by customer_id", (customers, emails)).fetchall()
    state["products"] = db.execute(
        "select p.product_id, p.name, p.price, p.version, s.available from products p join stock s "
        "using (product_id) where p.product_id = any(%s) or p.name = any(%s) order by p.product_id",
        (products, list(product_names))).fetchall()
    state["orders"] = db.execute(
        "select order_id, customer_id, status, total, version from orders "
        "where order_id = any(%s) or customer_id = any(%s) order by order_id", (orders, customers)).fetchall()
    order_ids = [o[0] for o in state["orders"]]
    state["order_items"] = db.execute(
        "select order_id, product_id, quantity, unit_price from order_items "
        "where order_id = any(%s) or product_id = any(%s) order by order_id, product_id",
        (order_ids, products)).fetchall()
    aggregates = customers + products + order_ids + [c[0] for c in state["customers"]] + \
        [p[0] for p in state["products"]]
    state["outbox"] = db.execute(
        "select event_id, aggregate_id, sequence_number, event_type from outbox "
        "where aggregate_id = any(%s) order by id", (aggregates,)).fetchall()
    return state


@contextmanager
def nothing_written(db: psycopg.Connection, **scope: tuple[str, ...]) -> Iterator[None]:
    """The block (a failed command) changes no row, stock level or outbox event of these aggregates."""
    before = write_model_state(db, **scope)
    yield
    after = write_model_state(db, **scope)
    for table in before:
        assert after[table] == before[table], f"{table} changed by a failed command"


# ---- events ---------------------------------------------------------------------------------------

class Event(NamedTuple):
    partition: int
    offset: int
    envelope: dict
    key: bytes
    value: bytes
    headers: dict


@pytest.fixture(scope="session")
def codecs(setup_done: None, settings: Settings) -> dict[str, EventCodec]:
    return prepare_event_codecs(settings)


class TopicReader:
    """Reads one topic from the beginning of every partition up to the current high watermarks.

    Positions persist between calls, so each call only reads what was appended since the last one;
    events are indexed by message key (the aggregate id)."""

    def __init__(self, settings: Settings, topic: str, codec: EventCodec) -> None:
        self.topic = topic
        self.codec = codec
        self.consumer = Consumer({**kafka.base_config(settings), "group.id": f"e2e-{uuid.uuid4()}",
                                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                                  "enable.partition.eof": False, "fetch.wait.max.ms": 50})
        meta = self.consumer.list_topics(topic, timeout=10)
        assert topic in meta.topics and not meta.topics[topic].error, f"topic {topic} missing: {meta.topics}"
        self.partitions = sorted(meta.topics[topic].partitions)
        self.positions = {p: 0 for p in self.partitions}
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in self.partitions])
        self.by_key: dict[bytes, list[Event]] = {}

    def refresh(self, timeout: float = 20.0) -> None:
        highs = {}
        for p in self.partitions:
            low, high = self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)
            self.positions[p] = max(self.positions[p], low)
            highs[p] = high
        end = deadline(timeout)
        while any(self.positions[p] < highs[p] for p in self.partitions):
            assert time.monotonic() < end, f"reading {self.topic}: at {self.positions}, want {highs}"
            for msg in self.consumer.consume(1000, timeout=0.5):
                if msg.error():
                    raise AssertionError(f"consuming {self.topic}: {msg.error()}")
                p, offset = msg.partition(), msg.offset()
                self.positions[p] = max(self.positions[p], offset + 1)
                self.by_key.setdefault(msg.key() or b"", []).append(
                    Event(p, offset, {}, msg.key(), msg.value(), dict(msg.headers() or [])))

    def events(self, aggregate_id: str) -> list[Event]:
        self.refresh()
        found = self.by_key.get(aggregate_id.encode(), [])
        decoded = [e._replace(envelope=self.codec.decode(e.value)) if not e.envelope else e for e in found]
        self.by_key[aggregate_id.encode()] = decoded
        return sorted(decoded, key=lambda e: (e.partition, e.offset))

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture(scope="session")
def kafka_events(settings: Settings, codecs: dict[str, EventCodec]) -> Iterator:
    """kafka_events(topic, aggregate_id) -> [Event(partition, offset, envelope, key, value, headers)]:
    every event of that aggregate on the topic, in (partition, offset) order."""
    readers: dict[str, TopicReader] = {}

    def read(topic: str, aggregate_id: str) -> list[Event]:
        if topic not in readers:
            readers[topic] = TopicReader(settings, topic, codecs[topic])
        return readers[topic].events(aggregate_id)

    yield read
    for reader in readers.values():
        reader.close()


@pytest.fixture(scope="session")
def wait_for_events(kafka_events) -> Any:
    """wait_for_events(topic, aggregate_id, n): until at least n events are on the topic (bounded);
    returns them all."""

    def wait(topic: str, aggregate_id: str, n: int, timeout: float = EVENT_TIMEOUT_S) -> list[Event]:
        end = deadline(timeout)
        while True:
            found = kafka_events(topic, aggregate_id)
            if len(found) >= n:
                return found
            if time.monotonic() > end:
                pytest.fail(f"{len(found)} of {n} events of {aggregate_id} on {topic} after {timeout}s: "
                            f"{[e.envelope.get('event_type') for e in found]}", pytrace=False)
            time.sleep(0.1)

    return wait


def refused(r: httpx.Response, status: int, code: str, field: str | None = None) -> dict:
    """The error answer of a refused request: status, machine-readable code, message and field."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code, body
    assert body["message"]
    if field is not None:
        assert body.get("field") == field, body
    return body


def money(value: Any) -> Decimal:
    """A response/event amount as an exact Decimal (refusing floats, which would hide rounding)."""
    assert not isinstance(value, float), f"amount {value!r} is a float"
    return Decimal(str(value))


def serving_record(db, projection: str) -> ServingRecord:
    """Which version of `projection`'s read model serves now in read database `db` (a rebuild moves it)."""
    return ServingRecord.from_document(projection, db[READ_MODEL_VERSIONS].find_one({"_id": projection}))


def serving_order_collections(db) -> OrderCollections:
    return serving_record(db, "order-views").order_collections


@pytest.fixture(scope="module")
def isolated(setup_done, settings: Settings, spawn_gateway_module, tmp_path_factory) -> Iterator[dict]:
    prefix = f"g{uuid.uuid4().hex[:6]}-"
    gateway = spawn_gateway_module("isolated", TOPIC_PREFIX=prefix)
    gateway.wait_ready(leader=None)
    yield {"prefix": prefix, "gateway": gateway, "log_dir": tmp_path_factory.mktemp("pipelines"),
           "made": {"customers": [], "products": [], "orders": []}}
    admin_topics = kafka.admin_client(settings).list_topics(timeout=10).topics
    kafka.delete_topics(settings, [t for t in admin_topics if t.startswith(prefix) or prefix in t])


@pytest.fixture(scope="module")
def spawn_gateway_module(setup_done, gateway_logs):
    with gateway_spawner(gateway_logs) as spawn:
        yield spawn
