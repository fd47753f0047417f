"""Rebuild benchmark: `cqrs rebuild` of every projection over a generated history.

Generates a realistic history with the domain aggregates (benchmarks.eventgen) sized so that the
order-events topic holds `--order-events` events (1,000,000 by default), produces it onto isolated
topics, then runs `cqrs rebuild` of order-views, product-search and sales-stats as a user would (a
subprocess, plain progress lines), checks that every order, product and ordered product has its
document in the version that serves, and deletes everything it created.

    make bench-rebuild                          # 1M order events
    python -m benchmarks.rebuild --order-events 100000   # a smoke run
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.projection_run import Loaded
from benchmarks.projections import Bench, BenchError, BusyMeter, fmt, rate

ROOT = Path(__file__).resolve().parents[1]
ORDER_SHARE = 0.51          # of the generated events, on order-events (eventgen's mix)
TARGET_SECONDS_PER_MILLION = 180.0
SUMMARY = re.compile(r"([\d,]+) events replayed into ([\d,]+) aggregates' documents in \S+ \(([\d,]+) events/s\)")


def run_rebuild(projection: str, env: dict[str, str], timeout: float) -> tuple[float, int, int, str]:
    """(wall seconds, events replayed, aggregates written, output) of one `cqrs rebuild` run."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "app.cli", "rebuild", projection, "--grace-s", "0"], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - started
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise BenchError(f"cqrs rebuild {projection} exited {proc.returncode}: {out.strip().splitlines()[-1:]}")
    found = SUMMARY.search(out)
    if not found:
        raise BenchError(f"cqrs rebuild {projection} printed no summary: {out[-500:]}")
    return wall, int(found[1].replace(",", "")), int(found[2].replace(",", "")), out


def rebuild_each(loaded: Loaded, env: dict[str, str], timeout: float) -> dict[str, tuple[float, int, int, float]]:
    """`cqrs rebuild` of every projection in turn, its output echoed; (wall seconds, events, aggregates,
    machine busy %) by projection. A rebuild that replays less than its topic holds stops the run."""
    from agents.projections import PROJECTIONS, TOPICS

    results = {}
    for projection in PROJECTIONS:
        (topic,) = TOPICS[projection]
        meter = BusyMeter()
        wall, events, docs, out = run_rebuild(projection, env, timeout)
        results[projection] = (wall, events, docs, meter.percent())
        print(f"\n$ cqrs rebuild {projection}\n" + "\n".join("  " + ln for ln in out.strip().splitlines()))
        if events < loaded.per_topic[topic]:
            raise BenchError(f"{projection}: replayed {events} events, the topic holds {loaded.per_topic[topic]}")
    return results


def serving_counts(bench: Bench) -> tuple[int, int, int]:
    """(order views, product stats, search documents) in the versions the rebuilds switched to."""
    from agents.read_model_versions import ServingRecord
    from domain.read_models import READ_MODEL_VERSIONS
    from connectors import elasticsearch, mongo

    # FerretDB counts by scanning: allow it minutes, not the connectors' 30 s.
    client = mongo.mongo_client(bench.settings, socketTimeoutMS=600_000, serverSelectionTimeoutMS=5_000)
    db = mongo.read_database(bench.settings, client)
    def serving(projection: str) -> ServingRecord:
        return ServingRecord.from_document(projection, db[READ_MODEL_VERSIONS].find_one({"_id": projection}))

    views = db[serving("order-views").order_collections.views].count_documents({})
    stats = db[serving("sales-stats").product_stats].count_documents({})
    client.close()
    es = elasticsearch.es_client(bench.settings)
    es.indices.refresh(index=bench.settings.es_products_alias)
    products = es.count(index=bench.settings.es_products_alias)["count"]
    es.close()
    return views, stats, products


def document_checks(bench: Bench, loaded: Loaded) -> list[tuple[str, bool, str]]:
    """Every order, product and ordered product has its document in the version that serves."""
    views, stats, products = serving_counts(bench)
    return [("order views in the serving version", views == loaded.aggregates["order-events"],
             f"{fmt(views)} of {fmt(loaded.aggregates['order-events'])} orders"),
            ("products behind the search alias", products == loaded.aggregates["product-events"],
             f"{fmt(products)} of {fmt(loaded.aggregates['product-events'])} products"),
            ("product stats in the serving sales version", stats == loaded.products_in_orders,
             f"{fmt(stats)} of {fmt(loaded.products_in_orders)} products ordered")]


def print_rates(results: dict[str, tuple[float, int, int, float]]) -> None:
    print("\nresults (rebuild = replay, switch, no grace period; 2 cores shared with every server):")
    for projection, (wall, events, docs, busy) in results.items():
        per_million = wall / events * 1e6
        print(f"  {projection:<15} {fmt(events)} events -> {fmt(docs)} aggregates in {wall:.1f}s wall: "
              f"{fmt(rate(events, wall))} events/s, {per_million:.0f}s per million events, "
              f"machine busy {busy:.0f}%")


def speed_check(results: dict[str, tuple[float, int, int, float]]) -> tuple[str, bool, str]:
    """The target: order-views rebuilt in under TARGET_SECONDS_PER_MILLION seconds per million events."""
    ov_wall, ov_events = results["order-views"][0], results["order-views"][1]
    per_million = ov_wall / ov_events * 1e6
    return (f"order-views: 1M events in under {TARGET_SECONDS_PER_MILLION:.0f}s",
            per_million < TARGET_SECONDS_PER_MILLION, f"{per_million:.0f}s per million")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--order-events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--timeout-s", type=float, default=1800)
    args = parser.parse_args(argv)
    bench = Bench(argparse.Namespace(events=int(args.order_events / ORDER_SHARE), seed=args.seed))
    env = {**bench.iso.env, "PROJECTION_GROUP_SUFFIX": bench.iso.group_suffix}
    failed = False
    try:
        bench.check_services()
        bench.prepare()
        loaded = bench.preload()
        bench.stream = None   # the generated events are on the broker; free the memory for the rebuild
        results = rebuild_each(loaded, env, args.timeout_s)
        checks = document_checks(bench, loaded)
        print_rates(results)
        checks.append(speed_check(results))
        for what, ok, detail in checks:
            print(f"  [{'ok' if ok else 'MISSED'}] {what}: {detail}")
            failed |= not ok
    except BenchError as exc:
        print(f"bench-rebuild: {exc}", file=sys.stderr)
        failed = True
    finally:
        for problem in bench.cleanup():
            print(f"cleanup: {problem}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
