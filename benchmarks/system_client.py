"""The lean client of `make bench-system`: keep-alive HTTP/1.1 on asyncio streams (a few µs of CPU per
request, so the client does not compete with the pipeline for the 2 cores), and the shop's mix of
commands and reads offered open loop (each request is due at a fixed time; its latency counts from then,
so queueing in a saturated server is never hidden)."""
from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 30.0
IDLE_REUSE_S = 3.0  # uvicorn closes a keep-alive connection idle for 5 s; never reuse one near that


class LeanHttp:
    """A bounded pool of keep-alive connections to one server; `request` returns (status, body)."""

    def __init__(self, host: str, port: int, token: str, size: int) -> None:
        self.host, self.port, self.token = host, port, token
        self.idle: asyncio.LifoQueue = asyncio.LifoQueue()
        self.slots = asyncio.Semaphore(size)

    async def request(self, method: str, path: str, body: dict | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        async with self.slots:
            conn = None
            while conn is None and not self.idle.empty():
                reader, writer, since = self.idle.get_nowait()
                if time.monotonic() - since < IDLE_REUSE_S:
                    conn = reader, writer
                else:
                    writer.close()
            if conn is None:
                conn = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT_S)
            reader, writer = conn
            payload = json.dumps(body).encode() if body is not None else b""
            head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {self.token}\r\n"
                    + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
                    + (f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n" if body is not None
                       else "") + "\r\n")
            try:
                writer.write(head.encode() + payload)
                status, data, keep = await asyncio.wait_for(read_response(reader), REQUEST_TIMEOUT_S)
            except BaseException:
                writer.close()
                raise
            if keep:
                self.idle.put_nowait((reader, writer, time.monotonic()))
            else:
                writer.close()
            return status, data

    async def close(self) -> None:
        while not self.idle.empty():
            self.idle.get_nowait()[1].close()  # (reader, writer, idle since)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, keep = 0, True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
        elif name.lower() == b"connection" and value.strip().lower() == b"close":
            keep = False
    return status, (await reader.readexactly(length) if length else b""), keep


@dataclass
class Tally:
    """What one step measured (seconds)."""

    commands: list[float] = field(default_factory=list)
    accepted: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)  # 503 answers: how soon each shed request was told
    queries: list[float] = field(default_factory=list)
    visible: dict[str, list[float]] = field(default_factory=lambda: {"order view": [], "history": [], "search": []})
    statuses: Counter = field(default_factory=Counter)
    orders: int = 0
    never_visible: Counter = field(default_factory=Counter)  # followed writes not seen within 10 s, by kind

    @property
    def shed(self) -> int:
        return len(self.refused)

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500 and status != 503 or status == 0)


def percentile(values: list[float], p: float) -> float:
    data = sorted(values)
    return data[min(len(data) - 1, int(round(p / 100 * (len(data) - 1))))] if data else float("nan")


# The mix, per order placed (1-3 lines): what else the shop does in the same time.
MIX = {"create_order": 1.0, "add_item": 0.10, "cancel": 0.08, "ship": 0.30, "deliver": 0.20,
       "update_product": 0.05, "read_order": 0.50, "read_history": 0.30, "search": 0.50}
SAMPLE_EVERY = 10          # every tenth order is followed until visible (every product update: they are rare)
VISIBLE_WITHIN_S = 10.0
WAIT_MS = 2000             # an order follower reads with its consistency token: woken when the view has it
POLL_S = 0.1               # search has no token: a product update's follower polls, 10 reads a second at most


class Shop:
    """State of the run the mix draws on: customers, products and orders placed so far."""

    def __init__(self, customers: list[str], products: list[tuple[str, str]], rng: random.Random) -> None:
        self.customers, self.products, self.rng = customers, products, rng
        self.pending: list[str] = []
        self.shipped: list[str] = []
        self.placed: list[tuple[str, str]] = []
        self.prices: dict[str, list[str]] = {}  # every price set per product, in the order they were set

    def take(self, pool: list[str]) -> str | None:
        return pool.pop(self.rng.randrange(len(pool))) if pool else None


async def timed(tally: Tally, kind: str, call) -> tuple[int, bytes]:
    started = time.perf_counter()
    try:
        status, body = await call
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        status, body = 0, b""
    took = time.perf_counter() - started
    (tally.queries if kind == "query" else tally.commands).append(took)
    if kind != "query" and status not in (0, 503):
        tally.accepted.append(took)
    tally.statuses[status] += 1
    if status == 503:
        tally.refused.append(took)
    return status, body


async def until_visible(tally: Tally, what: str, since: float, read, check, pause_s: float = 0.0) -> None:
    """Read until `check` accepts the answer. Order reads carry the command's consistency token, so each read
    waits server-side until the projection announces the version (up to WAIT_MS) instead of polling."""
    deadline = since + VISIBLE_WITHIN_S
    while time.perf_counter() < deadline:
        try:
            status, body = await read()
            if status == 200 and check(json.loads(body)):
                tally.visible[what].append(time.perf_counter() - since)
                return
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            await asyncio.sleep(POLL_S)
        await asyncio.sleep(pause_s)
    tally.never_visible[what] += 1


async def one(kind: str, shop: Shop, gw: LeanHttp, q: LeanHttp, tally: Tally,
              followers: set[asyncio.Task]) -> None:
    """One request of the mix; a sampled order or product update also gets its visibility followed."""
    rng = shop.rng
    if kind == "create_order":
        customer = rng.choice(shop.customers)
        lines = [{"product_id": p, "quantity": rng.randint(1, 3)}
                 for p, _ in rng.sample(shop.products, rng.randint(1, 3))]
        status, body = await timed(tally, "command", gw.request("POST", "/api/orders", {"customer_id": customer,
                                                                                        "items": lines}))
        if status == 201:
            tally.orders += 1
            placed = json.loads(body)
            order, token = placed["order_id"], {"Consistency-Token": f"order:{placed['order_id']}@{placed['version']}"}
            shop.pending.append(order)
            shop.placed.append((order, customer))
            if tally.orders % SAMPLE_EVERY == 0:
                since = time.perf_counter()
                followers.add(asyncio.create_task(until_visible(
                    tally, "order view", since,
                    lambda: q.request("GET", f"/api/orders/{order}?wait_ms={WAIT_MS}", headers=token),
                    lambda b: b.get("freshness") != "write-model")))  # answered from its view
                followers.add(asyncio.create_task(until_visible(
                    tally, "history", since,
                    lambda: q.request("GET", f"/api/customers/{customer}/orders?size=100&wait_ms={WAIT_MS}",
                                      headers=token),
                    lambda b: any(o["order_id"] == order for o in b["orders"]))))
    elif kind in ("add_item", "cancel", "ship"):
        order = shop.take(shop.pending)
        if order is None:
            return
        if kind == "add_item":
            status, _ = await timed(tally, "command", gw.request("POST", f"/api/orders/{order}/items", {
                "product_id": rng.choice(shop.products)[0], "quantity": 1}))
            shop.pending.append(order)
        else:
            status, _ = await timed(tally, "command", gw.request("POST", f"/api/orders/{order}/{kind}", {}))
            if kind == "ship" and status == 202:
                shop.shipped.append(order)
    elif kind == "deliver":
        if (order := shop.take(shop.shipped)) is not None:
            await timed(tally, "command", gw.request("POST", f"/api/orders/{order}/deliver"))
    elif kind == "update_product":
        product, name = rng.choice(shop.products)
        price = f"{rng.randint(1000, 9999) / 100:.2f}"
        status, _ = await timed(tally, "command", gw.request("PATCH", f"/api/products/{product}",
                                                             {"price": price, "stock": rng.randint(10**5, 10**6)}))
        if status == 202:
            prices = shop.prices.setdefault(product, [])
            prices.append(price)
            mine = len(prices) - 1
            # visible once search shows this price or one set after it: a second update of the product
            # before the first was seen overwrites it, and the first is then never shown on its own
            followers.add(asyncio.create_task(until_visible(
                tally, "search", time.perf_counter(),
                lambda: q.request("GET", f"/api/products/search?q={name.replace(' ', '+')}&size=5"),
                lambda b: any(r["product_id"] == product and
                              Decimal(str(r["price"])) in {Decimal(p) for p in prices[mine:]}
                              for r in b["results"]), POLL_S)))
    elif kind == "read_order" and shop.placed:
        await timed(tally, "query", q.request("GET", f"/api/orders/{rng.choice(shop.placed)[0]}"))
    elif kind == "read_history" and shop.placed:
        await timed(tally, "query", q.request("GET", f"/api/customers/{rng.choice(shop.placed)[1]}/orders"))
    elif kind == "search":
        await timed(tally, "query", q.request("GET", f"/api/products/search?q={rng.choice(['lamp', 'desk', 'chair'])}"))


async def offer(rate: float, duration_s: float, shop: Shop, gw: LeanHttp, q: LeanHttp) -> Tally:
    """Offer the mix at `rate` orders/s (and the rest in proportion) for `duration_s`, open loop."""
    tally, followers, running = Tally(), set(), set()
    kinds, weights = list(MIX), list(MIX.values())
    total_rate = rate * sum(weights)
    start = time.perf_counter()
    n = 0
    while (due := start + n / total_rate) < start + duration_s:
        if (wait := due - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        n += 1
        task = asyncio.create_task(one(shop.rng.choices(kinds, weights)[0], shop, gw, q, tally, followers))
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running, *followers)
    return tally
