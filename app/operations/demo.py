"""The demo: the pipeline's main job played end to end, as a user would see it.

Starts the command gateway (with its outbox relay), the query API and one worker per projection
through `cqrs`, then plays the e-commerce story: add products, search for them, place and ship an
order, read the customer's history and the sales dashboard. Every request and the answer a user
would see is printed, with how long each command took to become visible on the query side. Each run
uses fresh customers and products, so it can be run again and again on the same stack.
"""
from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from app.operations import processes
from app.operations.lag import LagReader, totals
from agents.projections import PROJECTIONS
from app.settings import Settings
from app.http.identity import issue_token
from domain.access import Role
from domain import consistency
from app.operations.setup import setup_all

VISIBLE_WITHIN_S = 60.0
CATCH_UP_WITHIN_S = 600.0
GROUP_READ_TIMEOUT_S = 10.0
SHOWN_CHARS = 1200


TOKEN_TTL_S = 3600


class DemoFailed(RuntimeError):
    """A step of the story did not do what a user would expect."""


class Story:
    """HTTP calls of the story, printed the way a user would read them."""

    def __init__(self, gateway: str, query_api: str, settings: Settings, out: Callable[[str], None]) -> None:
        self.commands = httpx.Client(base_url=gateway, timeout=15)
        self.queries = httpx.Client(base_url=query_api, timeout=15)
        self.settings = settings
        self.tokens = {"admin": self.issue(Role.admin, "demo-admin"), "operator": self.issue(Role.operator, "demo-ops")}
        self.caller = "admin"
        self.out = out
        self.delays: list[tuple[str, float]] = []
        self.last_token: str | None = None

    def issue(self, role: Role, subject: str, customer_id: str | None = None) -> str:
        """What `cqrs token issue --role ROLE [--customer-id ID]` prints."""
        return issue_token(self.settings, [role], subject=subject, customer_id=customer_id, ttl_s=TOKEN_TTL_S)

    def act_as(self, caller: str, token: str | None = None) -> None:
        if token is not None:
            self.tokens[caller] = token
        self.caller = caller
        self.out(f"\n   (as {caller}: Authorization: Bearer <token of `cqrs token issue`>)")

    def call(self, client: httpx.Client, method: str, path: str, *, expect: int, show: bool = True,
             **kwargs: Any) -> dict[str, Any]:
        auth = {"Authorization": f"Bearer {self.tokens[self.caller]}"}
        response = client.request(method, path, **{**kwargs, "headers": {**auth, **(kwargs.get("headers") or {})}})
        self.last_token = response.headers.get(consistency.HEADER)
        if show:
            target = path + (f"?{httpx.QueryParams(kwargs['params'])}" if kwargs.get("params") else "")
            self.out(f"\n> {method} {target}")
            for name, value in (kwargs.get("headers") or {}).items():
                self.out(f"> {name}: {value}")
            if "json" in kwargs:
                self.out(_indent(_dumps(kwargs["json"])))
            self.out(f"< {response.status_code}" + (f"  {consistency.HEADER}: {self.last_token}"
                                                     if self.last_token else ""))
            self.out(_indent(_dumps(response.json())))
        if response.status_code != expect:
            raise DemoFailed(f"{method} {path} answered {response.status_code}, expected {expect}: {response.text}")
        return response.json()

    def command(self, method: str, path: str, body: dict[str, Any] | None = None, expect: int = 201) -> dict:
        return self.call(self.commands, method, path, json=body if body is not None else {}, expect=expect)

    def until_visible(self, what: str, since: float, path: str, check: Callable[[dict[str, Any]], bool],
                      **params: Any) -> dict[str, Any]:
        """Poll the query API until `check` holds; record the delay since the command was accepted."""
        deadline = time.monotonic() + VISIBLE_WITHIN_S
        while True:
            body = self.call(self.queries, "GET", path, expect=200, show=False, params=params or None)
            if check(body):
                delay = time.perf_counter() - since
                self.delays.append((what, delay))
                self.call(self.queries, "GET", path, expect=200, params=params or None)
                self.out(f"  ({what}: visible {delay * 1000:.0f} ms after the command was accepted)")
                return body
            if time.monotonic() > deadline:
                raise DemoFailed(f"{what} not visible within {VISIBLE_WITHIN_S:.0f}s; last answer: {_dumps(body)}")
            time.sleep(0.05)

    def close(self) -> None:
        self.commands.close()
        self.queries.close()


def play(story: Story, run: str) -> dict[str, Any]:
    """The seed's walkthrough: products, search, order, stats, history, dashboard."""
    out = story.out
    out("\n== 1. An admin adds products (command side)")
    headphones = story.command("POST", "/api/products", {
        "name": "Wireless Headphones", "category": "Electronics", "price": "79.99", "stock": 25,
        "description": "Noise-cancelling Bluetooth headphones with 20-hour battery",
        "tags": ["wireless", "bluetooth", "audio", "noise-cancelling"]})["product_id"]
    added = time.perf_counter()
    earbuds = story.command("POST", "/api/products", {
        "name": "Bluetooth Wireless Earbuds", "category": "Electronics", "price": "59.99", "stock": 40,
        "description": "True wireless earbuds with charging case", "tags": ["wireless", "bluetooth", "audio"]})[
        "product_id"]
    cable = story.command("POST", "/api/products", {
        "name": "USB-C Charging Cable", "category": "Accessories", "price": "9.99", "stock": 200,
        "description": "Braided 2 m cable", "tags": ["usb-c", "cable"]})["product_id"]

    out("\n== 2. A customer searches (query side, Elasticsearch)")
    search = {"q": "wireless headphones", "category": "Electronics", "max_price": "100", "sort": "newest", "size": 5}
    story.until_visible("product searchable", added, "/api/products/search",
                        lambda b: headphones in {r["product_id"] for r in b["results"]},
                        **search)

    out("\n== 3. The customer signs up (the sign-up service registers them as an admin) and places an order")
    customer = story.command("POST", "/api/customers", {"name": "Ada Lovelace",
                                                        "email": f"ada.{run}@example.com"})["customer_id"]
    story.act_as("customer", story.issue(Role.customer, f"customer:{customer}", customer))
    order = story.command("POST", "/api/orders", {"customer_id": customer, "items": [
        {"product_id": headphones, "quantity": 1}, {"product_id": cable, "quantity": 2}]})["order_id"]
    placed = time.perf_counter()
    out("\n   ... and reads their order history at once, passing the order's consistency token back: the")
    out("   query API answers only once the history reflects the order (or from the write model), no polling")
    history = story.call(story.queries, "GET", f"/api/customers/{customer}/orders", expect=200,
                         headers={consistency.HEADER: story.last_token or ""})
    if order not in {o["order_id"] for o in history["orders"]}:
        raise DemoFailed(f"the history read with the order's token does not list {order}: {_dumps(history)}")
    story.delays.append(("history with the order's token", time.perf_counter() - placed))
    story.until_visible("order view", placed, f"/api/orders/{order}", lambda b: b.get("freshness") == "current")
    out("\n   Another customer's token may not read it:")
    story.act_as("another customer", story.issue(Role.customer, "customer:someone-else", "someone-else"))
    story.call(story.queries, "GET", f"/api/orders/{order}", expect=403)

    out("\n== 4. The warehouse (an admin) ships it")
    story.act_as("admin")
    story.command("POST", f"/api/orders/{order}/ship", {"tracking_number": f"TRK-{run}"}, expect=202)
    shipped = time.perf_counter()
    story.until_visible("shipment", shipped, f"/api/orders/{order}",
                        lambda b: b.get("status") == "shipped" and b.get("freshness") == "current")

    out("\n== 5. Product stats follow the order (sales projection -> search index)")
    story.until_visible("purchase count", placed, "/api/products/search",
                        lambda b: any(r["product_id"] == headphones and r.get("purchase_count", 0) >= 1
                                      for r in b["results"]), **search)

    out("\n== 6. The customer views their order history")
    story.act_as("customer")
    story.until_visible("order history", placed, f"/api/customers/{customer}/orders",
                        lambda b: any(o["order_id"] == order and o["status"] == "shipped" for o in b["orders"]))

    out("\n== 7. The live sales dashboard (an operator)")
    story.act_as("operator")
    dashboard = story.call(story.queries, "GET", "/api/dashboard/sales", expect=200)
    return {"customer": customer, "order": order, "products": [headphones, earbuds, cable], "dashboard": dashboard}


@contextmanager
def pipeline(settings: Settings, log_dir: Path, out: Callable[[str], None]) -> Iterator[tuple[str, str]]:
    """Gateway (relay on), query API and one worker per projection, stopped on exit."""
    started: list[processes.AppProcess] = []
    try:
        gateway = processes.start("gateway", ["gateway"], log_dir=log_dir, port=processes.free_port(),
                                  env={"OUTBOX_RELAY_ENABLED": "true"})
        started.append(gateway)
        query_api = processes.start("query-api", ["query-api"], log_dir=log_dir, port=processes.free_port())
        started.append(query_api)
        for projection in PROJECTIONS:
            port = processes.free_port()
            worker = processes.start(f"worker-{projection}", ["worker", projection, "--metrics-port", str(port)],
                                     log_dir=log_dir, ready_path=None)
            worker.base_url = f"http://127.0.0.1:{port}"
            started.append(worker)
        out(f"started gateway {gateway.base_url}, query API {query_api.base_url}, workers "
            f"{', '.join(PROJECTIONS)} (logs in {log_dir})")
        wait_caught_up(settings, started[2:], out)
        yield gateway.base_url or "", query_api.base_url or ""
        check_running(started[2:])
    finally:
        for p in reversed(started):
            p.stop()


def backlog_reader(settings: Settings) -> LagReader:
    """`cqrs lag`'s reader, patient: it reads while the workers join their groups, when the coordinator
    can take longer than the connect timeout to answer."""
    patient = settings.model_copy(update={"connect_timeout_s": GROUP_READ_TIMEOUT_S})
    return LagReader(patient, settings.projection_group_suffix)


def backlog(reader: LagReader) -> dict[str, int]:
    """Events each projection's group still has to process (`cqrs lag`'s offset lag)."""
    return {total.projection: total.offset_lag for total in totals(reader.collect(PROJECTIONS))}


def check_running(workers: list[processes.AppProcess]) -> None:
    for p in workers:
        if p.proc.poll() is not None:
            raise DemoFailed(f"{p.name} exited with {p.proc.returncode}: {p.log_tail(5)}")


def worker_ready(worker: processes.AppProcess) -> bool:
    """The worker's `projection_worker_ready` gauge, read from its metrics endpoint."""
    try:
        metrics = httpx.get(f"{worker.base_url}/metrics", timeout=2).text
    except httpx.HTTPError:
        return False
    return any(line.startswith("projection_worker_ready{") and line.rstrip().endswith(" 1.0")
               for line in metrics.splitlines())


def wait_caught_up(settings: Settings, workers: list[processes.AppProcess], out: Callable[[str], None]) -> None:
    """Before the story, let the workers drain what earlier runs left on the topics, so the delays
    measured are those of new commands (bounded by CATCH_UP_WITHIN_S, progress every 2 s)."""
    deadline = time.monotonic() + CATCH_UP_WITHIN_S
    reader = backlog_reader(settings)
    while True:
        behind = backlog(reader)
        restoring = [p.name for p in workers if not worker_ready(p)]
        if not any(behind.values()) and not restoring:
            out("workers are caught up with the topics")
            return
        check_running(workers)
        if time.monotonic() > deadline:
            raise DemoFailed(f"workers still behind after {CATCH_UP_WITHIN_S:.0f}s: {behind}")
        out("workers catching up with earlier events: " + ", ".join(f"{k} {v}" for k, v in behind.items())
            + (f"; restoring tables: {', '.join(restoring)}" if restoring else ""))
        time.sleep(2)


def run_demo(settings: Settings, out: Callable[[str], None] = print, serve: bool = False) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    out(f"demo run {run}: preparing the write model, topics and schemas")
    for what, result in setup_all(settings).items():
        out(f"  {what}: {result}")
    log_dir = Path(tempfile.gettempdir()) / f"cqrs-demo-{run}"
    with pipeline(settings, log_dir, out) as (gateway, query_api):
        story = Story(gateway, query_api, settings, out)
        try:
            result = play(story, run)
        finally:
            story.close()
        out("\n== Command -> visible on the query side")
        for what, delay in story.delays:
            out(f"  {what:<20} {delay * 1000:8.0f} ms")
        out(f"\nsales dashboard: {query_api}/api/dashboard/sales (an operator's or admin's token)    "
            f"operations page: {query_api}/dashboard#token=<`cqrs token issue --role operator`>    "
            f"API docs: {query_api}/docs, {gateway}/docs")
        if serve:
            out("serving until Ctrl-C")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    out("demo passed")
    return result


def _dumps(value: Any) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "\n  …"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
