"""`make bench-queries`: what one read costs the query API, by kind, on the running pipeline.

The gateway, the query API and one worker per projection start as in `make bench-system` (isolated by a
topic prefix, database and Redis db). A catalogue and some orders are placed and projected, then each kind
of read the shop's mix makes is sent back to back from `--concurrency` keep-alive connections: an order
(a cache hit after its first read), a customer's history page (the same) and a product search. Per kind
it prints reads/s, latency p50/p99 and the CPU per read of the query API, of Redis and of the other
servers (from /proc), so a change on the read path can be measured on its own, without the write load
that makes `make bench-system`'s figures swing."""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from benchmarks.measures import cpu_by_role, probe_note, process_cpu
from benchmarks.system import SystemRun
from benchmarks.system_client import LeanHttp, percentile
from app.settings import get_settings

ORDERS_VISIBLE_WITHIN_S = 60.0


def place_orders(run: SystemRun, gateway: str, query: str, count: int, customers: int, products: int
                 ) -> list[tuple[str, str]]:
    """(order id, customer id) of `count` orders, each visible in its view (read with its consistency token)."""
    shop = run.seed(gateway, customers, products)
    rng = random.Random(11)
    auth = {"Authorization": f"Bearer {run.token}"}
    placed = []
    with httpx.Client(base_url=gateway, headers=auth, timeout=30) as c:
        for _ in range(count):
            customer = rng.choice(shop.customers)
            body = c.post("/api/orders", json={"customer_id": customer, "items": [
                {"product_id": rng.choice(shop.products)[0], "quantity": 1}]}).json()
            placed.append((body["order_id"], customer, body["version"]))
    deadline = time.monotonic() + ORDERS_VISIBLE_WITHIN_S
    with httpx.Client(base_url=query, headers=auth, timeout=30) as c:
        for order, _, version in placed:
            while c.get(f"/api/orders/{order}", params={"min_version": version, "wait_ms": 2000}
                        ).json().get("freshness") == "write-model":
                if time.monotonic() > deadline:
                    raise SystemExit(f"order {order} not in its view within {ORDERS_VISIBLE_WITHIN_S:g} s")
    return [(order, customer) for order, customer, _ in placed]


async def reads(query: str, token: str, paths: Callable[[random.Random], str], count: int, concurrency: int
                ) -> tuple[list[float], dict[int, int]]:
    host, port = query.removeprefix("http://").split(":")
    client, rng = LeanHttp(host, int(port), token, concurrency), random.Random(5)
    took: list[float] = []
    statuses: dict[int, int] = {}
    left = iter(range(count))

    async def connection() -> None:
        for _ in left:
            started = time.perf_counter()
            status, _ = await client.request("GET", paths(rng))
            took.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1

    try:
        await asyncio.gather(*(connection() for _ in range(concurrency)))
    finally:
        await client.close()
    return took, statuses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=3000, help="reads per kind (a first pass of each fills the cache)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--orders", type=int, default=200)
    args = parser.parse_args(argv)
    run = SystemRun(get_settings(), Path(tempfile.mkdtemp(prefix="bench-queries-")))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M')}; {probe_note()}")
    try:
        gateway, query = run.start()
        placed = place_orders(run, gateway, query, args.orders, 100, 50)
        kinds: dict[str, Callable[[random.Random], str]] = {
            "order (cached)": lambda rng: f"/api/orders/{rng.choice(placed)[0]}",
            "history page (cached)": lambda rng: f"/api/customers/{rng.choice(placed)[1]}/orders",
            "search": lambda rng: f"/api/products/search?q={rng.choice(['lamp', 'desk', 'chair'])}",
        }
        query_pid = next(pid for pid, role in run.own.items() if role == "query API")
        for kind, paths in kinds.items():
            asyncio.run(reads(query, run.token, paths, len(placed), args.concurrency))  # fills the cache
            before, started = process_cpu(), time.perf_counter()
            took, statuses = asyncio.run(reads(query, run.token, paths, args.reads, args.concurrency))
            elapsed = time.perf_counter() - started
            cpu = cpu_by_role(before, process_cpu(), {query_pid: "query API"})
            per_read = {role: 1000 * seconds / args.reads for role, seconds in cpu.items()}
            print(f"-- {kind}: {args.reads / elapsed:,.0f} reads/s, p50 {percentile(took, 50) * 1000:.1f} / p99 "
                  f"{percentile(took, 99) * 1000:.1f} ms, statuses {dict(sorted(statuses.items()))}; CPU per read: "
                  + ", ".join(f"{role} {ms:.2f} ms" for role, ms in sorted(per_read.items(), key=lambda kv: -kv[1])
                              if ms >= 0.01))
    finally:
        run.stop_children()
        for problem in run.cleanup():
            print(f"cleanup: {problem}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
