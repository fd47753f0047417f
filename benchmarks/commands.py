"""Command-side benchmark: concurrent clients create orders over loopback against a real gateway.

Prints throughput and p50/p95/p99 latency of POST /api/orders, the requests the gateway shed past its
admission limit (503 overloaded), and commit-to-broker-ack publish lag measured from the outbox
(created_at at insert vs. the broker acknowledgment time).

    make bench-commands            # or: python -m benchmarks.commands --concurrency 16 --duration 20
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import httpx

from app.operations import processes
from app.settings import get_settings
from app.http.identity import issue_token
from benchmarks.loadgen import SHOP_RATE_LIMIT, run_load
from benchmarks.measures import probe_note
from domain.access import Role
from connectors import postgres


def seed_catalogue(base_url: str, token: str, customers: int, products: int) -> tuple[list[str], list[str]]:
    headers = {"Authorization": f"Bearer {token}"}
    run = os.urandom(4).hex()
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as client:
        cids = [client.post("/api/customers", json={"name": f"Bench Customer {i}",
                                                     "email": f"bench-{run}-{i}@example.com"}).json()["customer_id"]
                for i in range(customers)]
        pids = [client.post("/api/products", json={"name": f"Bench Product {i}", "category": "Bench",
                                                    "price": f"{random.randint(1000, 9999) / 100:.2f}",
                                                    "stock": 10_000_000}).json()["product_id"]
                for i in range(products)]
    return cids, pids


def publish_lag(since: float) -> tuple[int, dict[str, float], int]:
    """Percentiles (ms) of commit-to-ack lag for events created since `since` (epoch seconds)."""
    settings = get_settings()
    deadline = time.monotonic() + 60
    with postgres.connect(settings) as conn:
        while True:
            backlog = conn.execute("select count(*) from outbox where published_at is null").fetchone()[0]
            if backlog == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        row = conn.execute(
            "select count(*), percentile_cont(array[0.5, 0.95, 0.99]) within group "
            "(order by extract(epoch from published_at - created_at)) from outbox "
            "where created_at >= to_timestamp(%s) and published_at is not null", (since,)).fetchone()
    count, pcts = row
    return count, {p: v * 1000 for p, v in zip(("p50", "p95", "p99"), pcts or [float("nan")] * 3)}, backlog


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=16, help="connections for the throughput run")
    parser.add_argument("--rate", type=float, default=300.0, help="offered orders/s for the latency run")
    parser.add_argument("--gateways", type=int, default=1, help="gateway processes (replicas)")
    parser.add_argument("--embedded-relay", action="store_true",
                        help="run the relay inside the gateways instead of as its own process")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--products", type=int, default=200)
    args = parser.parse_args(argv)

    settings = get_settings()
    token = issue_token(settings, [Role.admin], subject="bench-commands", ttl_s=6 * 3600)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-commands-"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; gateways: {args.gateways} processes; relay: "
          f"{'inside the gateways' if args.embedded_relay else 'its own process'}; all services on the same machine; "
          f"{time.strftime('%Y-%m-%d %H:%M')}; {probe_note()}")
    processes.start("setup", ["setup"], log_dir=log_dir, ready_path=None).proc.wait(120)
    env = {**SHOP_RATE_LIMIT, **({} if args.embedded_relay else {"OUTBOX_RELAY_ENABLED": "false"})}
    gateways = [processes.start(f"gateway-{n}", ["gateway"], port=processes.free_port(), log_dir=log_dir, env=env)
                for n in range(args.gateways)]
    if not args.embedded_relay:
        gateways.append(processes.start("relay", ["relay"], log_dir=log_dir, ready_path=None))
    targets = [("127.0.0.1", int(g.base_url.rsplit(":", 1)[1])) for g in gateways if g.base_url]
    try:
        cids, pids = seed_catalogue(gateways[0].base_url, token, args.customers, args.products)

        def order_body(i: int) -> dict:
            rnd = random.Random(i)
            return {"customer_id": rnd.choice(cids),
                    "items": [{"product_id": pid, "quantity": rnd.randint(1, 3)}
                              for pid in rnd.sample(pids, rnd.randint(1, 3))]}

        runs = {}
        for label, kwargs in ((f"throughput, {args.concurrency} connections back to back",
                               {"concurrency": args.concurrency}),
                              (f"latency at an offered {args.rate:.0f} orders/s (open loop)",
                               {"concurrency": 64, "rate": args.rate})):
            since = time.time()
            result = asyncio.run(run_load(targets, "/api/orders", order_body, token=token,
                                          duration_s=args.duration, **kwargs))
            runs[label] = (result, publish_lag(since))
    finally:
        for g in gateways:
            g.stop()
    failed = False
    for label, (result, (events, lag, backlog)) in runs.items():
        # 503 is the gateway shedding past its admission limit: it did nothing and says "retry", so it is
        # reported as shed, not as a failure of the run
        shed = result.statuses.get(503, 0)
        errors = {s: n for s, n in result.statuses.items() if not 200 <= s < 300 and s != 503}
        failed |= bool(errors)
        print(f"POST /api/orders — {label}:")
        print(f"  {result.ok / result.elapsed:,.0f} orders/s ({result.ok} created, shed (503 overloaded) {shed}, "
              f"errors {errors or 0}); latency ms, every answer "
              + "  ".join(f"{p} {result.percentile(q) * 1000:.1f}" for p, q in (("p50", 50), ("p95", 95), ("p99", 99))))
        print(f"  publish lag (commit -> broker ack) over {events} events, ms: "
              + "  ".join(f"{k} {v:.1f}" for k, v in lag.items()) + f"; backlog left {backlog}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
