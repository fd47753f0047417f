"""`make bench-system`: the whole pipeline on one machine, as a shop runs it.

The gateway (with its relay), the query API and one worker per projection run as `cqrs` processes next to
every server, isolated by a topic prefix, database and Redis db. A catalogue is seeded (products and
customers), then the shop's mix (benchmarks/system_client.py `MIX`: per order placed with 1-3 lines, 0.1
item additions, 0.08 cancels, 0.3 shipments, 0.2 deliveries, 0.05 price/stock updates, 0.5 order reads,
0.3 history reads, 0.5 searches) is offered open loop at stepped rates. Per step it prints the achieved
order rate, command and query latency, command -> visible latency (order view, history, search: every
tenth order and product update is followed), errors and the CPU per order of every process (from /proc,
servers included). Capacity is the highest step with command p99 <= 100 ms, visible p99 <= 1 s and no
errors. A final step offers twice the capacity for 30 s and reports what was shed and how fast the
projections caught up."""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from app.http.identity import issue_token
from app.operations import processes
from app.settings import Settings, get_settings
from agents.projections import PROJECTIONS
from benchmarks.loadgen import SHOP_RATE_LIMIT
from benchmarks.measures import PY_SPY, PY_SPY_MISSING, cpu_by_role, probe_note, process_cpu, py_spy
from benchmarks.projection_cleanup import Cleanup
from benchmarks.projection_run import Isolation
from benchmarks.system_client import LeanHttp, Shop, Tally, offer, percentile
from connectors import ServiceUnavailable
from domain.access import Role

CAPACITY = {"command_p99_s": 0.100, "visible_p99_s": 1.0}
SETTLE_S = 5.0
LAG_BOUND_S = 2.0
LAG_READ_ATTEMPTS = 5
OWN_ROLES = ("gateway + relay", "query API", *(f"worker {p}" for p in PROJECTIONS))


class SystemRun(Cleanup):
    def __init__(self, base: Settings, log_dir: Path) -> None:
        self.iso = Isolation(f"sys{uuid.uuid4().hex[:6]}")
        self.env = {**self.iso.env, "PROJECTION_GROUP_SUFFIX": self.iso.group_suffix, **SHOP_RATE_LIMIT}
        self.settings = base.model_copy(update={"topic_prefix": self.iso.prefix, "mongo_database":
                                                self.iso.env["MONGO_DATABASE"], "redis_url": self.iso.env["REDIS_URL"],
                                                "es_products_alias": self.iso.env["ES_PRODUCTS_ALIAS"]})
        self.log_dir, self.children, self.app_ids, self.own = log_dir, [], [], {}
        self.token = issue_token(base, [Role.admin], subject=f"bench-system-{self.iso.run}", ttl_s=6 * 3600)

    def start(self) -> tuple[str, str]:
        processes.start("setup", ["setup"], log_dir=self.log_dir, env=self.env, ready_path=None).proc.wait(180)
        gateway = processes.start("gateway", ["gateway"], log_dir=self.log_dir, port=processes.free_port(),
                                  env=self.env, timeout=120)
        query = processes.start("query-api", ["query-api"], log_dir=self.log_dir, port=processes.free_port(),
                                env=self.env, timeout=120)
        self.children += [gateway, query]
        self.own.update({gateway.proc.pid: "gateway + relay", query.proc.pid: "query API"})
        for projection in PROJECTIONS:
            worker = processes.start(f"worker-{projection}", ["worker", projection], log_dir=self.log_dir,
                                     env=self.env, ready_path=None)
            self.children.append(worker)
            self.own[worker.proc.pid] = f"worker {projection}"
        return gateway.base_url or "", query.base_url or ""

    def seed(self, gateway: str, customers: int, products: int) -> Shop:
        with httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {self.token}"}, timeout=30) as c:
            made = [(c.post("/api/products", json={
                "name": f"Bench {w} {i} {self.iso.run}", "category": "Bench", "price": "12.50", "stock": 10**6,
                "tags": [w]}).json()["product_id"], f"Bench {w} {i} {self.iso.run}")
                for i, w in zip(range(products), ["lamp", "desk", "chair"] * products)]
            people = [c.post("/api/customers", json={"name": f"Customer {i}",
                                                     "email": f"{self.iso.run}-{i}@example.com"}).json()["customer_id"]
                      for i in range(customers)]
        return Shop(people, made, random.Random(7))

    def profile(self, out: Path, label: str, seconds: float) -> list:
        """py-spy on each of the project's processes for one step (its own CPU counts as other processes')."""
        out.mkdir(parents=True, exist_ok=True)
        return [py_spy(pid, out / f"{label}-{role.replace(' + ', '-').replace(' ', '-')}.txt",
                       self.log_dir / "py-spy.log", seconds) for pid, role in self.own.items()]

    def lag(self) -> tuple[int, int, float | None]:
        """(events the projections' source partitions hold, summed per projection; offset lag, summed the same
        way; the stalest projection's event-time lag in seconds, None while one cannot be read)."""
        from app.operations.lag import LagReader, totals
        for attempt in range(LAG_READ_ATTEMPTS):
            try:
                rows = LagReader(self.settings, self.iso.group_suffix).collect(PROJECTIONS)
                break
            except ServiceUnavailable as exc:  # a broker busy with the step's load answers late: read again
                if attempt == LAG_READ_ATTEMPTS - 1:
                    raise
                print(f"   (lag read: {exc}; reading again)")
        worst = [t.event_time_lag_s for t in totals(rows)]
        return (sum(r.end for r in rows), sum(r.offset_lag for r in rows),
                None if any(w is None for w in worst) else max(worst, default=0.0))


async def step(rate: float, seconds: float, shop: Shop, gateway: str, query: str, token: str) -> Tally:
    (gh, gp), (qh, qp) = (u.removeprefix("http://").split(":") for u in (gateway, query))
    gw, q = LeanHttp(gh, int(gp), token, 256), LeanHttp(qh, int(qp), token, 256)
    try:
        return await offer(rate, seconds, shop, gw, q)
    finally:
        await gw.close()
        await q.close()


def report(rate: float, seconds: float, tally: Tally, cpu: dict[str, float]) -> dict:
    orders = max(1, tally.orders)
    vis = {k: (percentile(v, 50), percentile(v, 99)) for k, v in tally.visible.items()}
    own = sum(cpu.get(r, 0.0) for r in OWN_ROLES)
    row = {"offered": rate, "achieved": tally.orders / seconds, "cmd_p50": percentile(tally.commands, 50),
           "cmd_p99": percentile(tally.commands, 99), "query_p99": percentile(tally.queries, 99), "visible": vis,
           "errors": tally.errors, "never_visible": sum(tally.never_visible.values()), "shed": tally.shed,
           "cpu_ms_total": 1000 * sum(cpu.values()) / orders, "cpu_ms_own": 1000 * own / orders}
    print(f"\n-- offered {rate:g} orders/s for {seconds:g} s: achieved {row['achieved']:.1f} orders/s; commands p50 "
          f"{row['cmd_p50'] * 1000:.0f} ms p99 {row['cmd_p99'] * 1000:.0f} ms; queries p99 "
          f"{row['query_p99'] * 1000:.0f} ms; errors {tally.errors}; shed (503) {tally.shed}; statuses "
          f"{dict(sorted(tally.statuses.items()))}")
    print("   command -> visible p50 / p99 ms: " + ", ".join(
        f"{k} {a * 1000:.0f} / {b * 1000:.0f}" for k, (a, b) in vis.items()) + "; never visible within 10 s: " + (
        ", ".join(f"{k} {n}" for k, n in sorted(tally.never_visible.items())) or "0"))
    print(f"   CPU per order: {row['cpu_ms_total']:.1f} ms in all processes, {row['cpu_ms_own']:.1f} ms in the "
          "project's own: " + ", ".join(f"{k} {1000 * v / orders:.1f}" for k, v in sorted(
              cpu.items(), key=lambda kv: -kv[1]) if 1000 * v / orders >= 0.05))
    return row


def within_capacity(row: dict) -> bool:
    worst_visible = max((p99 for _, p99 in row["visible"].values() if p99 == p99), default=float("inf"))
    return row["cmd_p99"] <= CAPACITY["command_p99_s"] and worst_visible <= CAPACITY["visible_p99_s"] \
        and row["errors"] == 0 and row["never_visible"] == 0 and row["shed"] == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="25,50,75,100,150,200", help="offered orders/s per step")
    parser.add_argument("--step-s", type=float, default=30.0)
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--products", type=int, default=200)
    parser.add_argument("--overload-s", type=float, default=30.0, help="0 skips the overload step")
    parser.add_argument("--warmup-s", type=float, default=60.0,
                        help="mix offered at the first rate before the steps, not reported: Kafka, Elasticsearch "
                             "and the registry compile their hot paths in the first minutes after a start")
    parser.add_argument("--profile", metavar="DIR", type=Path,
                        help="record the project's processes with py-spy during each step into "
                             "DIR/<rate>-<process>.txt (collapsed stacks)")
    args = parser.parse_args(argv)
    if args.profile and not PY_SPY.exists():
        parser.error(PY_SPY_MISSING)
    run = SystemRun(get_settings(), Path(tempfile.mkdtemp(prefix="bench-system-")))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; gateway (relay inside), query API and one "
          f"worker per projection on the same machine as every server; logs in {run.log_dir}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}; {probe_note()}")
    rows = []
    try:
        gateway, query = run.start()
        started = time.monotonic()
        shop = run.seed(gateway, args.customers, args.products)
        print(f"seeded {args.products} products and {args.customers} customers in {time.monotonic() - started:.0f} s")
        rates = [float(r) for r in args.rates.split(",")]
        if args.warmup_s > 0:
            warm = asyncio.run(step(rates[0], args.warmup_s, shop, gateway, query, run.token))
            print(f"warm-up: {warm.orders} orders at {rates[0]:g} orders/s offered over {args.warmup_s:g} s (not reported)")
        time.sleep(SETTLE_S)
        for rate in rates:
            profilers = run.profile(args.profile, f"{rate:g}", args.step_s) if args.profile else []
            before = process_cpu()
            tally = asyncio.run(step(rate, args.step_s, shop, gateway, query, run.token))
            for profiler in profilers:
                profiler.wait(30)
            rows.append(report(rate, args.step_s, tally, cpu_by_role(before, process_cpu(), run.own)))
            time.sleep(SETTLE_S)
        fit = [r for r in rows if within_capacity(r)]
        capacity = max((r["offered"] for r in fit), default=0.0)
        print(f"\ncapacity: {capacity:g} orders/s (the highest step with command p99 <= 100 ms, visible p99 <= 1 s, "
              "no errors, nothing shed)")
        if args.overload_s > 0:
            overload(run, shop, gateway, query, 2 * max(capacity, rates[0]), args.overload_s)
    finally:
        run.stop_children()
        for problem in run.cleanup():
            print(f"cleanup: {problem}")
    return 0


def overload(run: SystemRun, shop: Shop, gateway: str, query: str, rate: float, seconds: float) -> None:
    """The overload step, then how the projections catch up: the backlog left when it ends, how soon the
    event-time lag is back within LAG_BOUND_S and the offset lag at 0, and the catch-up rate against the
    rate events came in during the step."""
    before, (heads_before, _, _) = process_cpu(), run.lag()
    tally = asyncio.run(step(rate, seconds, shop, gateway, query, run.token))
    ended = time.monotonic()
    heads, backlog, worst = run.lag()
    ingest = (heads - heads_before) / seconds
    print("\n== overload (twice the capacity)")
    report(rate, seconds, tally, cpu_by_role(before, process_cpu(), run.own))
    print(f"   accepted commands p99 {percentile(tally.accepted, 99) * 1000:.0f} ms ({len(tally.accepted)}); shed "
          f"{tally.shed} of {sum(tally.statuses.values())} requests, told within p50 "
          f"{percentile(tally.refused, 50) * 1000:.0f} / p99 {percentile(tally.refused, 99) * 1000:.0f} ms")
    at_end = worst
    within_bound = 0.0 if worst is not None and worst <= LAG_BOUND_S else None
    left = backlog
    while left > 0 and time.monotonic() - ended < 120:
        time.sleep(0.25)
        _, left, worst = run.lag()
        if within_bound is None and worst is not None and worst <= LAG_BOUND_S:
            within_bound = time.monotonic() - ended
    drained = time.monotonic() - ended
    print(f"   when it ended: {backlog:,} events behind (event-time lag "
          f"{'not readable' if at_end is None else f'{at_end:.1f} s'}); lag within {LAG_BOUND_S:g} s after "
          f"{'-' if within_bound is None else f'{within_bound:.1f} s'}; offset lag 0 after {drained:.1f} s"
          + (f" (still {left:,} behind)" if left else ""))
    if backlog >= 2 * ingest and not left:  # a backlog of at least two seconds of input: its drain is measurable
        print(f"   catch-up {backlog / drained:,.0f} events/s against {ingest:,.0f} events/s coming in during the step "
              f"({backlog / drained / max(ingest, 1e-9):.1f}x)")
    else:
        print(f"   events came in at {ingest:,.0f} events/s during the step (per projection, summed); no backlog of "
              "two seconds' input formed to measure a catch-up rate on")


if __name__ == "__main__":
    raise SystemExit(main())
