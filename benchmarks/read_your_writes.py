"""Read-your-writes benchmark: what a consistency token costs a reader, under background traffic.

A client places an order (or ships it) and reads it back at once with the `Consistency-Token` its command
answer carried, `--tries` times, while two other clients send `--background` orders/s through the same
gateway. A plain read (no token) of the same order right after the command is timed too, so the extra
latency of the token is the difference. Every token read must show the command's new state; the run
fails otherwise. Isolated: its own topics (`bench-ryw-<run>-*`), consumer group, read database and Redis
database 2, all removed afterwards.

    make bench-ryw        # or: python -m benchmarks.read_your_writes --tries 400 --background 50
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

from app.operations import processes
from app.settings import Settings, get_settings
from app.http.identity import issue_token
from benchmarks.loadgen import SHOP_RATE_LIMIT
from connectors import kafka, mongo, redis
from domain.access import Role

REDIS_DB = 2


def percentiles(samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return f"p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms, max {max(samples) * 1000:.1f} ms"


def background(base_url: str, token: str, customers: list[str], product: str, per_s: float,
               stop: threading.Event, counts: list[int]) -> None:
    """Orders at `per_s`, paced (open loop within the client's own latency)."""
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
        next_at, i = time.monotonic(), 0
        while not stop.is_set():
            r = client.post("/api/orders", json={"customer_id": customers[i % len(customers)],
                                                 "items": [{"product_id": product, "quantity": 1}]})
            counts[0 if r.status_code == 201 else 1] += 1
            i += 1
            next_at += 1 / per_s
            stop.wait(max(0.0, next_at - time.monotonic()))


class Tries:
    def __init__(self) -> None:
        self.token_reads: list[float] = []
        self.plain_reads: list[float] = []
        self.commands: list[float] = []
        self.sources: dict[str, int] = {}
        self.wrong: list[str] = []

    def one(self, gateway: httpx.Client, query: httpx.Client, customer: str, product: str, order: str | None) -> str:
        started = time.perf_counter()
        if order is None:
            r = gateway.post("/api/orders", json={"customer_id": customer,
                                                  "items": [{"product_id": product, "quantity": 1}]})
            order, want = r.json()["order_id"], ("pending", 1)
        else:
            r = gateway.post(f"/api/orders/{order}/ship")
            want = ("shipped", 2)
        self.commands.append(time.perf_counter() - started)
        started = time.perf_counter()
        read = query.get(f"/api/orders/{order}", headers={"Consistency-Token": r.headers["Consistency-Token"]})
        self.token_reads.append(time.perf_counter() - started)
        started = time.perf_counter()
        plain = query.get(f"/api/orders/{order}")
        self.plain_reads.append(time.perf_counter() - started)
        body = read.json()
        source = body.get("freshness", f"status {read.status_code}")
        self.sources[source] = self.sources.get(source, 0) + 1
        if (body.get("status"), body.get("last_seq")) != want:
            self.wrong.append(f"{order}: {body.get('status')}@{body.get('last_seq')} instead of {want} "
                              f"(plain read: {plain.json().get('status')})")
        return order


def cleanup(settings: Settings, prefix: str) -> None:
    topics = [t for t in kafka.admin_client(settings).list_topics(timeout=10).topics if prefix in t]
    kafka.delete_topics(settings, topics)
    client = mongo.mongo_client(settings)
    try:
        client.drop_database(settings.mongo_database)
    finally:
        client.close()
    redis.redis_client(settings).flushdb()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=400, help="command + token read pairs (half place, half ship)")
    parser.add_argument("--background", type=float, default=50.0, help="other clients' orders per second")
    args = parser.parse_args(argv)

    run = uuid.uuid4().hex[:6]
    prefix, suffix = f"bench-ryw-{run}-", f"-bench-ryw-{run}"
    base = get_settings()
    redis_url = base.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    env = {"TOPIC_PREFIX": prefix, "PROJECTION_GROUP_SUFFIX": suffix, "MONGO_DATABASE": f"bench_ryw_{run}",
           "REDIS_URL": redis_url, "PROJECTION_START": "earliest", **SHOP_RATE_LIMIT}
    settings = Settings(topic_prefix=prefix, mongo_database=f"bench_ryw_{run}", redis_url=redis_url)
    token = issue_token(base, [Role.admin], subject="bench-ryw", ttl_s=6 * 3600)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-ryw-"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; gateway, order-views worker and query API on the "
          f"same machine as every server; background {args.background:.0f} orders/s; logs in {log_dir}")
    started = []
    stop = threading.Event()
    try:
        started.append(processes.start("gateway", ["gateway"], port=processes.free_port(), log_dir=log_dir, env=env))
        started.append(processes.start("worker", ["worker", "order-views"], log_dir=log_dir, env=env, ready_path=None))
        started.append(processes.start("query-api", ["query-api"], port=processes.free_port(), log_dir=log_dir,
                                       env=env))
        gateway_url, query_url = started[0].base_url, started[2].base_url
        with httpx.Client(base_url=gateway_url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as gw, \
                httpx.Client(base_url=query_url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as q:
            customers = [gw.post("/api/customers", json={"name": f"RYW {i}", "email": f"ryw-{run}-{i}@example.com"})
                         .json()["customer_id"] for i in range(6)]
            product = gw.post("/api/products", json={"name": "RYW product", "category": "Bench", "price": "10.00",
                                                      "stock": 10_000_000}).json()["product_id"]
            probe = gw.post("/api/orders", json={"customer_id": customers[0],
                                                 "items": [{"product_id": product, "quantity": 1}]}).json()["order_id"]
            warm = time.monotonic() + 120
            while q.get(f"/api/orders/{probe}").json().get("freshness") != "current":
                if time.monotonic() > warm:
                    raise RuntimeError(f"order-views never caught up; see {log_dir}")
                time.sleep(0.5)
            tries = Tries()
            counts = [0, 0]
            senders = [threading.Thread(target=background, args=(gateway_url, token, customers[1:], product,
                                                                 args.background / 2, stop, counts), daemon=True)
                       for _ in range(2)]
            for sender in senders:
                sender.start()
            began = time.monotonic()
            order = None
            for i in range(args.tries):
                order = tries.one(gw, q, customers[0], product, order if i % 2 else None)
            elapsed = time.monotonic() - began
            stop.set()
            for sender in senders:
                sender.join(15)
    finally:
        stop.set()
        for app in reversed(started):
            app.stop()
        cleanup(settings, prefix)
    print(f"background: {counts[0] / elapsed:.1f} orders/s accepted ({counts[1]} refused) for {elapsed:.0f} s")
    print(f"commands (place or ship), {len(tries.commands)}: {percentiles(tries.commands)}")
    print(f"read with the command's token, at once: {percentiles(tries.token_reads)}")
    print(f"plain read of the same order after it:  {percentiles(tries.plain_reads)}")
    extra = [t - p for t, p in zip(tries.token_reads, tries.plain_reads)]
    print(f"extra latency of the token read (token - plain, per try): {percentiles(extra)}")
    print(f"answered from: {tries.sources}; wrong state: {len(tries.wrong)} of {args.tries}")
    for line in tries.wrong[:5]:
        print(f"  {line}")
    return 1 if tries.wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
