"""What users read back: orders and order histories through the query API, each read twice — the first
answer may come from the cache the run's reads filled, the second must be a cache hit — and both must
equal the write model. A cached answer that survived a projection write (a lost invalidation, e.g. while
Redis was down) shows up here and nowhere else.
"""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import httpx

from tests.e2e.pipeline import Mismatches

PAGE_SIZE = 100
TIMEOUT_S = 10.0


def check_cached_reads(query_url: str, token: str, truth: dict, rng: random.Random, sample_orders: int = 0,
                       sample_customers: int = 0) -> Mismatches:
    """Read a sample (0: all) of orders and customers twice and count the answers that differ from `truth`."""
    found = Mismatches(counts={"cached_orders": 0, "cached_histories": 0})
    orders: dict[str, dict] = truth["orders"]
    by_customer: dict[str, list[str]] = defaultdict(list)
    for oid, o in orders.items():
        by_customer[o["customer_id"]].append(oid)
    with httpx.Client(base_url=query_url, timeout=TIMEOUT_S, headers={"Authorization": f"Bearer {token}"}) as client:
        for oid in _sample(sorted(orders), sample_orders, rng):
            for attempt in ("first", "second"):
                problem = _order_problem(client, oid, orders[oid], must_hit=attempt == "second")
                if problem:
                    found.add("cached_orders", oid, f"{attempt} read: {problem}")
                    break
        for cid in _sample(sorted(by_customer), sample_customers, rng):
            for attempt in ("first", "second"):
                problem = _history_problem(client, cid, {oid: orders[oid] for oid in by_customer[cid]},
                                           must_hit=attempt == "second")
                if problem:
                    found.add("cached_histories", cid, f"{attempt} read: {problem}")
                    break
    return found


def _sample(ids: list[str], n: int, rng: random.Random) -> list[str]:
    return ids if n <= 0 or n >= len(ids) else rng.sample(ids, n)


def _get(client: httpx.Client, path: str, must_hit: bool) -> tuple[dict[str, Any] | None, str]:
    try:
        r = client.get(path)
    except httpx.HTTPError as exc:
        return None, f"no answer: {type(exc).__name__}"
    if r.status_code != 200:
        return None, f"status {r.status_code}: {r.text[:120]}"
    if must_hit and r.headers.get("X-Cache") != "hit":
        return None, f"X-Cache {r.headers.get('X-Cache')!r}, not a hit"
    return r.json(), ""


def _order_problem(client: httpx.Client, oid: str, want: dict, must_hit: bool) -> str:
    body, problem = _get(client, f"/api/orders/{oid}", must_hit)
    if body is None:
        return problem
    got = (body.get("freshness"), body.get("status"), body.get("total"), body.get("customer_id"),
           body.get("customer_name"), body.get("last_seq"))
    expected = ("current", want["status"], want["total"], want["customer_id"], want["customer_name"], want["version"])
    if got != expected:
        return f"(freshness, status, total, customer, name, last_seq) {got} != {expected}"
    items = sorted((i["product_id"], i["quantity"], i["unit_price"]) for i in body.get("items") or [])
    return f"items {items} != {want['items']}" if items != want["items"] else ""


def _history_problem(client: httpx.Client, cid: str, want: dict[str, dict], must_hit: bool) -> str:
    entries: dict[str, dict] = {}
    pages = (len(want) + PAGE_SIZE - 1) // PAGE_SIZE
    for page in range(1, pages + 1):
        body, problem = _get(client, f"/api/customers/{cid}/orders?page={page}&size={PAGE_SIZE}", must_hit)
        if body is None:
            return f"page {page}: {problem}"
        if body.get("total") != len(want):
            return f"total {body.get('total')} != {len(want)} orders"
        entries.update((e["order_id"], e) for e in body.get("orders") or [])
    if set(entries) != set(want):
        missing, extra = sorted(set(want) - set(entries)), sorted(set(entries) - set(want))
        return f"orders missing {missing[:3]}, extra {extra[:3]}"
    for oid, w in want.items():
        e = entries[oid]
        if (e.get("status"), e.get("total"), e.get("last_seq")) != (w["status"], w["total"], w["version"]):
            return f"order {oid}: (status, total, last_seq) {(e.get('status'), e.get('total'), e.get('last_seq'))} " \
                   f"!= {(w['status'], w['total'], w['version'])}"
    return ""
