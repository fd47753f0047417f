"""The baselines of `make bench-projections`: (b) a naive in-process projection (one event at a time, one
write per event) and (d) a bare Faust agent and a bare confluent-kafka consumer that only decode and count.
Methods of the benchmark run (benchmarks.projections.Bench), kept apart to keep each module to one job."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from app.operations import processes
from benchmarks.projection_run import ROOT, BenchError


class Baselines:
    def run_faust_drain(self) -> None:
        topic = self.iso.prefix + "order-events"
        total = sum(self.ends[topic].values())
        app_id = f"{self.iso.marker}-drain"
        self.app_ids.append(app_id)
        out = self.log_dir / "drain.jsonl"
        log = (self.log_dir / "faust-drain.log").open("ab")
        env = {**os.environ, "DRAIN_APP_ID": app_id, "DRAIN_TOPIC": topic, "DRAIN_EXPECTED": str(total),
               "DRAIN_OUT": str(out), "PYTHONUNBUFFERED": "1"}
        launched, wall0 = time.monotonic(), time.time()
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.faust_drain"], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.children.append(proc)
        try:
            deadline = launched + self.args.timeout
            while not (out.exists() and out.read_text().strip()):
                if proc.poll() is not None:
                    tail = (self.log_dir / "faust-drain.log").read_text(errors="replace").splitlines()[-3:]
                    raise BenchError(f"bare Faust agent exited with {proc.returncode}: {' | '.join(tail)}")
                if time.monotonic() > deadline:
                    raise BenchError(f"bare Faust agent did not count {total} events within {self.args.timeout:.0f}s")
                time.sleep(0.2)
            line = json.loads(out.read_text().splitlines()[0])
            if line["decode_errors"]:
                raise BenchError(f"bare Faust agent: {line['decode_errors']} events failed to decode")
            self.results.faust = (line["count"], line["last_at"] - line["first_at"], line["last_at"] - wall0)
        finally:
            processes.stop_process(proc, 20.0)

    def run_bare_consumer(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        from connectors import kafka

        topic = self.iso.prefix + "order-events"
        total = sum(self.ends[topic].values())
        codec = self.codecs[topic]
        consumer = Consumer({**kafka.base_config(self.settings), "group.id": f"{self.iso.marker}-consumer",
                             "enable.auto.commit": False, "enable.partition.eof": False})
        try:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in self.ends[topic]])
            count = 0
            first = None
            deadline = time.monotonic() + self.args.timeout
            while count < total:
                if time.monotonic() > deadline:
                    raise BenchError(f"bare consumer read {count} of {total} events in {self.args.timeout:.0f}s")
                for msg in consumer.consume(1000, timeout=1.0):
                    if msg.error():
                        raise BenchError(f"bare consumer: {msg.error()}")
                    first = first or time.perf_counter()
                    codec.decode(msg.value())
                    count += 1
            self.results.consumer = (count, time.perf_counter() - first)
        finally:
            consumer.close()

    def first_order_events(self, n: int) -> list[bytes]:
        """The first n events of order-events as consumed (a per-partition prefix, so no aggregate has gaps)."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        from connectors import kafka

        topic = self.iso.prefix + "order-events"
        n = min(n, sum(self.ends[topic].values()))
        consumer = Consumer({**kafka.base_config(self.settings), "group.id": f"{self.iso.marker}-naive",
                             "enable.auto.commit": False})
        values: list[bytes] = []
        try:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in self.ends[topic]])
            deadline = time.monotonic() + 120
            while len(values) < n:
                if time.monotonic() > deadline:
                    raise BenchError(f"naive baseline: read {len(values)} of {n} events in 120s")
                values += [m.value() for m in consumer.consume(1000, timeout=1.0) if not m.error()]
        finally:
            consumer.close()
        return values[:n]

    def run_naive(self) -> None:
        from agents.sales_stats import APPLY_CONTRIBUTIONS, DAY_TTL_S, LEDGER_TTL_S
        from domain.read_models import ORDER_VIEWS
        from connectors import mongo, redis
        from domain.views import (
            OrderFacts,
            ReferenceData,
            apply_order_event,
            apply_order_facts,
            sales_contributions,
        )

        values = self.first_order_events(self.args.naive)
        codec = self.codecs[self.iso.prefix + "order-events"]
        refs = ReferenceData()
        client = mongo.mongo_client(self.settings)
        views = client[f"{self.settings.mongo_database}_naive"][ORDER_VIEWS]
        t0 = time.perf_counter()
        for value in values:
            event = codec.decode(value)
            view = views.find_one({"_id": event["aggregate_id"]})
            if view is not None and view["last_seq"] >= event["sequence_number"]:
                continue
            view = apply_order_event(view, event, refs)
            views.replace_one({"_id": view["_id"]}, view, upsert=True)
        self.results.naive["order views (find_one + replace_one)"] = (len(values), time.perf_counter() - t0)
        client.close()

        r = redis.redis_client(self.settings)
        script = r.register_script(APPLY_CONTRIBUTIONS)
        prefix = "naive:sales:"
        t0 = time.perf_counter()
        for value in values:
            event = codec.decode(value)
            oid = event["aggregate_id"]
            seq, state = r.hmget(f"{prefix}ledger:{oid}", "seq", "state")
            read_seq = int(seq) if seq is not None else 0
            if read_seq >= event["sequence_number"]:
                continue
            facts = apply_order_facts(OrderFacts.from_ledger(json.loads(state)) if state else None, event)
            contributions = sales_contributions(facts)
            args: list[Any] = [prefix, LEDGER_TTL_S, DAY_TTL_S, oid, read_seq, event["sequence_number"],
                               json.dumps(facts.as_ledger()), len(contributions)]
            for composite, amount in contributions.items():
                args += [*composite.split("|", 1), amount]
            script(args=args)
        self.results.naive["sales (HMGET + Lua script)"] = (len(values), time.perf_counter() - t0)
        r.close()
