"""The correctness checks of `make bench-projections`: every view, history entry, product stat, search
document and dashboard counter equals what the generated events imply, and no dead letters. Methods of
the benchmark run."""
from __future__ import annotations

import time
from collections import Counter

from benchmarks.measures import fmt
from benchmarks.projection_run import Loaded


class Checks:
    def dead_letter_ends(self) -> dict[int, int]:
        from agents.dead_letters import DLQ_TOPIC
        from connectors import kafka

        if DLQ_TOPIC not in kafka.admin_client(self.settings).list_topics(timeout=10).topics:
            return {}
        return self.end_offsets([DLQ_TOPIC])[DLQ_TOPIC]

    def dead_letters_since(self, starts: dict[int, int]) -> list[dict[str, str]]:
        """The dead letters of this run's topics written after `starts` (the topic is shared with other runs)."""
        from confluent_kafka import Consumer, TopicPartition

        from agents.dead_letters import DLQ_TOPIC, describe
        from connectors import kafka

        ends = self.dead_letter_ends()
        pending = {p: starts.get(p, 0) for p, end in ends.items() if end > starts.get(p, 0)}
        if not pending:
            return []
        consumer = Consumer({**kafka.base_config(self.settings), "group.id": f"{self.iso.marker}-dlq",
                             "enable.auto.commit": False})
        found, seen = [], 0
        total = sum(ends[p] - o for p, o in pending.items())
        try:
            consumer.assign([TopicPartition(DLQ_TOPIC, p, o) for p, o in pending.items()])
            deadline = time.monotonic() + 60
            while seen < total and time.monotonic() < deadline:
                for msg in consumer.consume(1000, timeout=1.0):
                    if msg.error():
                        continue
                    seen += 1
                    meta = describe(msg.headers())
                    if meta.get("source_topic", "").startswith(self.iso.prefix):
                        found.append(meta)
        finally:
            consumer.close()
        return found

    def verify(self, loaded: Loaded, dlq_before: dict[int, int]) -> None:
        """The read models hold what the events say: one view per order and product, every event applied."""
        from domain.read_models import CUSTOMER_HISTORY, ORDER_VIEWS, PRODUCT_STATS, SALES_PREFIX
        from connectors import elasticsearch, mongo, redis

        checks = self.results.checks
        client = mongo.mongo_client(self.settings)
        try:
            db = mongo.read_database(self.settings, client)
            seqs = [d.get("last_seq", 0) for d in db[ORDER_VIEWS].find({}, {"last_seq": 1})]
            checks.append(("order views", len(seqs) == loaded.aggregates["order-events"]
                           and sum(seqs) == loaded.per_topic["order-events"],
                           f"{fmt(len(seqs))} views, sum(last_seq) {fmt(sum(seqs))}; expected "
                           f"{fmt(loaded.aggregates['order-events'])} / {fmt(loaded.per_topic['order-events'])}"))
            histories = db[CUSTOMER_HISTORY].count_documents({})
            checks.append(("customer history entries", histories == loaded.aggregates["order-events"],
                           f"{fmt(histories)} (expected one per order: {fmt(loaded.aggregates['order-events'])})"))
            stats = db[PRODUCT_STATS].count_documents({})
            checks.append(("product stats", stats == loaded.products_in_orders,
                           f"{fmt(stats)} (expected {fmt(loaded.products_in_orders)})"))
        finally:
            client.close()
        es = elasticsearch.es_client(self.settings)
        try:
            alias = self.settings.es_products_alias
            es.indices.refresh(index=alias)
            checks.append(("search documents", *search_documents_check(es, alias, loaded)))
        finally:
            es.close()
        r = redis.redis_client(self.settings)
        try:
            orders = sum(int(r.hget(k, "orders") or 0) for k in r.scan_iter(f"{SALES_PREFIX}day:*", count=1000))
            checks.append(("dashboard orders", orders == loaded.orders_not_cancelled,
                           f"{fmt(orders)} (expected {fmt(loaded.orders_not_cancelled)} not cancelled)"))
        finally:
            r.close()
        dead = self.dead_letters_since(dlq_before)
        reasons = Counter(f"{d.get('projection')}: {d.get('reason')}" for d in dead)
        checks.append(("dead letters", not dead, f"{len(dead)} from this run's topics"
                       + (f" ({', '.join(f'{k} x{v}' for k, v in reasons.items())})" if dead else "")))


def search_documents_check(es, alias: str, loaded: Loaded) -> tuple[bool, str]:
    """Every product's search document holds what its events imply, `last_seq` included (the sequence of
    its last change: a document is written only when it changes)."""
    from agents.product_search import OWNED_ELSEWHERE
    from elasticsearch.helpers import scan

    found = {h["_id"]: h["_source"] for h in scan(es, index=alias, query={"query": {"match_all": {}}})}
    wrong = [pid for pid, want in loaded.searched.items() if pid not in found or any(
        found[pid].get(k) != v for k, v in want.items() if k not in OWNED_ELSEWHERE)]
    detail = f"{fmt(len(found))} docs, {fmt(len(wrong))} not as the events imply"
    if wrong:
        pid = wrong[0]
        detail += f", e.g. {pid}: {found.get(pid)} against {loaded.searched[pid]}"
    return len(found) == len(loaded.searched) and not wrong, detail + f"; expected {fmt(len(loaded.searched))} docs"
