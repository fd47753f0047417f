"""Query-side benchmark: projection throughput end to end, against a bare Faust agent, a bare consumer,
each sink's raw bulk ceiling and a naive one-write-per-event baseline, in one isolated run.

Everything runs under a run id of its own: topics `bench-<run>-*`, MongoDB database `cqrs_bench_<run>`,
Redis database 1 (flushed), search alias `bench-products-<run>`, consumer groups `*-bench-<run>`; all of
it is deleted at the end. The write model is not touched: order-view enrichment runs its one query per
batch and finds none of the generated products and customers (views carry null names).

    make bench-projections         # or: python -m benchmarks.projections --events 20000   (a smoke run)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROGRESS_EVERY_S = 10.0
TARGET_FRACTION_OF_CEILING = 0.7
TARGET_TIMES_NAIVE = 20
TARGET_PER_WORKER = 8000


class BenchError(RuntimeError):
    """A step failed or ran out of time; the message is one line."""


# ---- small helpers --------------------------------------------------------------------------------

def fmt(n: float) -> str:
    return f"{n:,.0f}"


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine so far (Linux /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def process_cpu() -> dict[int, tuple[str, int, float]]:
    """{pid: (command line, start time, user + system CPU seconds)} of every process (Linux /proc)."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(entry.name)] = (cmd or stat.split("(", 1)[1].rsplit(")", 1)[0], int(fields[19]),
                                (int(fields[11]) + int(fields[12])) / tick)
    return out


def cpu_by_role(before: dict[int, tuple[str, int, float]], after: dict[int, tuple[str, int, float]],
                own: dict[int, str]) -> dict[str, float]:
    """CPU seconds spent between two snapshots, by what the process is (processes that ended in between
    are not counted)."""
    roles: Counter = Counter()
    for pid, (cmd, started, cpu) in after.items():
        spent = cpu - before[pid][2] if pid in before and before[pid][1] == started else cpu
        if pid in own:
            role = own[pid]
        elif pid == os.getpid():
            role = "this benchmark process"
        elif cmd.startswith("postgres:") and " ferretdb " in cmd:
            role = "PostgreSQL backends of FerretDB"
        elif "ferretdb" in cmd:
            role = "FerretDB"
        elif cmd.startswith("postgres"):
            role = "PostgreSQL, other"
        elif "org.elasticsearch" in cmd:
            role = "Elasticsearch"
        elif "kafka.Kafka" in cmd:
            role = "Kafka"
        elif "apicurio" in cmd or "quarkus" in cmd:
            role = "schema registry"
        elif "redis-server" in cmd:
            role = "Redis"
        else:
            role = "other processes (not this benchmark)"
        roles[role] += spent
    return dict(roles)


class BusyMeter:
    def __init__(self) -> None:
        self.start = machine_busy()

    def percent(self) -> float:
        busy, total = machine_busy()
        return 100.0 * (busy - self.start[0]) / max(1, total - self.start[1])


# ---- the run --------------------------------------------------------------------------------------

@dataclass
class Isolation:
    run: str

    @property
    def prefix(self) -> str:
        return f"bench-{self.run}-"

    @property
    def marker(self) -> str:
        """Every Kafka topic and consumer group of the run contains this."""
        return f"bench-{self.run}"

    @property
    def group_suffix(self) -> str:
        return f"-bench-{self.run}"

    @property
    def env(self) -> dict[str, str]:
        return {"TOPIC_PREFIX": self.prefix, "MONGO_DATABASE": f"cqrs_bench_{self.run}",
                "REDIS_URL": "redis://127.0.0.1:6379/1", "ES_PRODUCTS_ALIAS": f"bench-products-{self.run}"}


@dataclass
class Loaded:
    per_topic: Counter
    aggregates: Counter
    counts: Counter
    orders_not_cancelled: int
    products_in_orders: int
    seconds: float


@dataclass
class ProjectionRun:
    name: str
    events: int
    launched_at: float
    assigned_at: float | None = None
    done_at: float | None = None
    committed: int = 0
    cpu_s: float = 0.0
    batches: tuple[int, float] = (0, float("nan"))   # (batches, mean events per batch)

    @property
    def seconds(self) -> float:
        start = self.assigned_at or self.launched_at
        return ((self.done_at or time.monotonic()) - start)

    @property
    def events_per_s(self) -> float:
        return rate(self.committed if self.done_at is None else self.events, self.seconds)


@dataclass
class Results:
    projections: dict[str, ProjectionRun] = field(default_factory=dict)
    overall: tuple[int, float] | None = None          # (events, seconds)
    pipeline_wall_s: float = 0.0
    pipeline_busy_pct: float = 0.0
    pipeline_cpu: dict[str, float] = field(default_factory=dict)   # role -> CPU seconds during the pipeline
    faust: tuple[int, float, float] | None = None      # (events, seconds consuming, wall seconds)
    consumer: tuple[int, float] | None = None
    naive: dict[str, tuple[int, float]] = field(default_factory=dict)
    ceilings: dict[str, tuple[int, float, str]] = field(default_factory=dict)  # label -> (docs, s, unit)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from app.settings import Settings

        self.args = args
        self.iso = Isolation(os.urandom(4).hex())
        os.environ.update(self.iso.env)   # this process and every child use the isolated settings
        self.settings = Settings()
        self.log_dir = Path(tempfile.mkdtemp(prefix=f"bench-projections-{self.iso.run}-"))
        self.results = Results()
        self.children: list[Any] = []
        self.app_ids: list[str] = []
        self.stream = None
        self.codecs: dict = {}
        self.ends: dict[str, dict[int, int]] = {}

    # -- setup ------------------------------------------------------------------------------------

    def check_services(self) -> None:
        from connectors import ServiceUnavailable, elasticsearch, kafka, mongo, postgres, redis, registry

        for module in (kafka, registry, mongo, elasticsearch, redis, postgres):
            try:
                module.check(self.settings)
            except ServiceUnavailable as exc:
                raise BenchError(str(exc)) from None

    def prepare(self) -> None:
        from app.setup import prepare_event_codecs
        from connectors import redis

        client = redis.redis_client(self.settings)
        try:
            client.flushdb()
        finally:
            client.close()
        self.codecs = prepare_event_codecs(self.settings)

    def preload(self) -> Loaded:
        from confluent_kafka import Producer

        from app.commands.relay import producer_config
        from benchmarks.eventgen import generate

        t0 = time.perf_counter()
        self.stream = stream = generate(self.args.events, seed=self.args.seed)
        gen_s = time.perf_counter() - t0
        producer = Producer({**producer_config(self.settings), "linger.ms": 20, "batch.num.messages": 10_000,
                             "queue.buffering.max.messages": 200_000, "delivery.timeout.ms": 120_000})
        failed: list[str] = []

        def on_delivery(err, _msg) -> None:
            if err is not None:
                failed.append(str(err))

        t0 = time.perf_counter()
        for e in stream.events:
            topic = self.iso.prefix + e.topic
            value = self.codecs[topic].encode(e.envelope)
            while True:
                try:
                    producer.produce(topic, key=e.key.encode(), value=value, headers=e.headers,
                                     on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        remaining = producer.flush(120)
        seconds = time.perf_counter() - t0
        if remaining or failed:
            raise BenchError(f"preload: {remaining} events unacknowledged after 120s, {len(failed)} failed "
                             f"({failed[:1]})")
        self.ends = self.end_offsets([self.iso.prefix + t for t in stream.per_topic])
        for topic, count in stream.per_topic.items():
            on_broker = sum(self.ends[self.iso.prefix + topic].values())
            if on_broker != count:
                raise BenchError(f"preload: {self.iso.prefix + topic} holds {on_broker} events, expected {count}")
        statuses: dict[str, bool] = {}
        products: set[str] = set()
        for e in stream.events:
            kind, p = e.envelope["event_type"], e.envelope["payload"][1]
            if kind == "OrderCreated":
                statuses[e.key] = True
                products.update(i["product_id"] for i in p["items"])
            elif kind == "ItemAdded":
                products.add(p["product_id"])
            elif kind == "OrderCancelled":
                statuses[e.key] = False
        print(f"preload: {fmt(len(stream.events))} events generated by the domain aggregates in {gen_s:.1f}s, produced "
              f"in {seconds:.1f}s ({fmt(rate(len(stream.events), seconds))}/s, lz4, murmur2_random, "
              f"{self.settings.topic_partitions} partitions)")
        print("  " + ", ".join(f"{t}: {fmt(n)} events / {fmt(stream.aggregates[t])} aggregates"
                               for t, n in sorted(stream.per_topic.items())))
        print("  " + ", ".join(f"{k} {fmt(v)}" for k, v in stream.counts.most_common()))
        return Loaded(stream.per_topic, stream.aggregates, stream.counts, sum(statuses.values()), len(products),
                      seconds)

    def end_offsets(self, topics: Iterable[str]) -> dict[str, dict[int, int]]:
        from confluent_kafka import Consumer, TopicPartition

        from connectors import kafka

        probe = Consumer({**kafka.base_config(self.settings), "group.id": f"{self.iso.marker}-probe"})
        try:
            out = {}
            for topic in topics:
                meta = probe.list_topics(topic, timeout=10).topics[topic]
                if meta.error:
                    raise BenchError(f"topic {topic}: {meta.error}")
                out[topic] = {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                              for p in meta.partitions}
            return out
        finally:
            probe.close()

    # -- (a) the pipeline -------------------------------------------------------------------------

    def run_pipeline(self, loaded: Loaded) -> None:
        from confluent_kafka import TopicPartition

        from app import processes
        from app.projections import PROJECTIONS, TOPICS
        from connectors import kafka

        admin = kafka.admin_client(self.settings)
        env = {**self.iso.env, "PROJECTION_START": "earliest", "PROJECTION_GROUP_SUFFIX": self.iso.group_suffix,
               "PYTHONUNBUFFERED": "1"}
        if self.args.batch_size:
            env["PROJECTION_BATCH_SIZE"] = str(self.args.batch_size)
        groups = {name: f"cqrs-{name}{self.iso.group_suffix}" for name in PROJECTIONS}
        self.app_ids += groups.values()
        tps = {name: [TopicPartition(self.iso.prefix + t, p) for t in TOPICS[name]
                      for p in self.ends[self.iso.prefix + t]] for name in PROJECTIONS}
        wanted = {name: sum(self.ends[self.iso.prefix + t][p] for t in TOPICS[name] for p in self.ends[self.iso.prefix + t])
                  for name in PROJECTIONS}
        dlq_before = self.dead_letter_ends()
        cpu_before = process_cpu()
        meter = BusyMeter()
        launched = time.monotonic()
        workers, ports = {}, {}
        for name in PROJECTIONS:
            ports[name] = processes.free_port()
            workers[name] = processes.start(f"worker-{name}", ["worker", name, "--metrics-port", str(ports[name])],
                                            log_dir=self.log_dir, env=env, ready_path=None)
            self.children.append(workers[name])
        runs = {name: ProjectionRun(name, wanted[name], launched) for name in PROJECTIONS}
        self.results.projections = runs
        profilers = self.start_profilers(workers) if self.args.profile else []
        try:
            self.drain_pipeline(admin, workers, runs, groups, tps, env, meter, launched)
            self.results.pipeline_cpu = cpu_by_role(cpu_before, process_cpu(), {
                **{w.proc.pid: f"worker {n}" for n, w in workers.items()},
                **{proc.pid: "py-spy profilers" for proc in profilers}})
            for name, port in ports.items():
                runs[name].batches = self.batch_sizes(port, name)
        finally:
            for w in workers.values():
                w.stop(timeout=30)
            for proc in profilers:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    stop(proc)
        self.results.pipeline_wall_s = max(r.done_at for r in runs.values()) - launched
        start = min(r.assigned_at for r in runs.values())
        projected = sum(n for t, n in loaded.per_topic.items() if t in {t for ts in TOPICS.values() for t in ts})
        self.results.overall = (projected, max(r.done_at for r in runs.values()) - start)
        self.verify(loaded, dlq_before)

    def start_profilers(self, workers: dict) -> list[subprocess.Popen]:
        """py-spy (sampling, from outside) on each worker until it exits: collapsed stacks per projection."""
        out = Path(self.args.profile)
        out.mkdir(parents=True, exist_ok=True)
        py_spy = Path(sys.executable).parent / "py-spy"
        procs = []
        for name, w in workers.items():
            log = (self.log_dir / f"py-spy-{name}.log").open("ab")
            procs.append(subprocess.Popen([str(py_spy), "record", "--pid", str(w.proc.pid), "--rate", "200",
                                           "--format", "raw", "--output", str(out / f"{name}.txt")],
                                          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
            log.close()
        self.children += procs
        print(f"  profiling the workers with py-spy into {out}/<projection>.txt (collapsed stacks)")
        return procs

    def drain_pipeline(self, admin, workers, runs, groups, tps, env, meter, launched) -> None:
        from confluent_kafka import ConsumerGroupTopicPartitions

        deadline = launched + self.args.timeout
        next_progress = launched + PROGRESS_EVERY_S
        print(f"(a) pipeline: {len(workers)} worker processes (`cqrs worker <projection>`), batch "
              f"{env.get('PROJECTION_BATCH_SIZE', self.settings.projection_batch_size)}, from earliest; "
              f"logs in {self.log_dir}")
        while True:
            now = time.monotonic()
            for name, w in workers.items():
                if w.proc.poll() is not None and runs[name].done_at is None:
                    raise BenchError(f"worker {name} exited with {w.proc.returncode}: "
                                     f"{' | '.join(w.log_tail(5).splitlines())}")
            for name, run in runs.items():
                if run.done_at is not None:
                    continue
                if run.assigned_at is None and self.group_consuming(admin, groups[name]):
                    run.assigned_at = now
                committed = self.committed(admin, ConsumerGroupTopicPartitions, groups[name], tps[name])
                run.committed = committed
                if committed >= run.events:
                    run.done_at = now
                    run.assigned_at = run.assigned_at or now
                    run.cpu_s = cpu_seconds(workers[name].proc.pid)
            if all(r.done_at is not None for r in runs.values()):
                break
            if now >= next_progress:
                print(f"  +{now - launched:4.0f}s  " + "  ".join(
                    f"{n} {fmt(r.committed)}/{fmt(r.events)}" + (" done" if r.done_at else "")
                    for n, r in runs.items()), flush=True)
                next_progress += PROGRESS_EVERY_S
            if now >= deadline:
                for name, run in runs.items():
                    run.cpu_s = run.cpu_s or cpu_seconds(workers[name].proc.pid)
                self.results.pipeline_busy_pct = meter.percent()
                raise BenchError(f"pipeline not caught up after {self.args.timeout:.0f}s: " + ", ".join(
                    f"{n} {r.committed}/{r.events}" for n, r in runs.items()))
            time.sleep(0.5)
        self.results.pipeline_busy_pct = meter.percent()

    @staticmethod
    def batch_sizes(port: int, projection: str) -> tuple[int, float]:
        """(batches, mean events per batch) from the worker's projection_batch_size histogram."""
        import httpx

        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except httpx.HTTPError:
            return 0, float("nan")
        values = {}
        for line in text.splitlines():
            for stat in ("sum", "count"):
                if line.startswith(f'projection_batch_size_{stat}{{projection="{projection}"}}'):
                    values[stat] = float(line.rsplit(" ", 1)[1])
        count = int(values.get("count", 0))
        return count, values.get("sum", 0.0) / count if count else float("nan")

    def group_consuming(self, admin, group: str) -> bool:
        try:
            desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result(10)
        except Exception:
            return False
        return desc.state.name == "STABLE" and any(m.assignment.topic_partitions for m in desc.members)

    @staticmethod
    def committed(admin, request_type, group: str, tps) -> int:
        try:
            result = admin.list_consumer_group_offsets([request_type(group, tps)], request_timeout=5)[group].result(10)
        except Exception:
            return 0
        return sum(tp.offset for tp in result.topic_partitions if tp.offset > 0)

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
        from app.read_models import CUSTOMER_HISTORY, ORDER_VIEWS, PRODUCT_STATS, SALES_PREFIX
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
            resp = es.search(index=alias, size=0, track_total_hits=True,
                             aggs={"seq": {"sum": {"field": "last_seq"}}})
            docs, seq_sum = resp["hits"]["total"]["value"], int(resp["aggregations"]["seq"]["value"])
            checks.append(("search documents", docs == loaded.aggregates["product-events"]
                           and seq_sum == loaded.per_topic["product-events"],
                           f"{fmt(docs)} docs, sum(last_seq) {fmt(seq_sum)}; expected "
                           f"{fmt(loaded.aggregates['product-events'])} / {fmt(loaded.per_topic['product-events'])}"))
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

    # -- (d) bare consumers -----------------------------------------------------------------------

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
            stop(proc)

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

    # -- (b) naive baseline -----------------------------------------------------------------------

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
        from app.read_models import ORDER_VIEWS
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

    # -- (c) sink ceilings ------------------------------------------------------------------------

    def sample_documents(self) -> tuple[list[dict], list[dict], list[tuple[dict, str]]]:
        """Order views, product documents and sales contributions built from the generated events."""
        from domain.views import (
            ReferenceData,
            apply_order_event,
            apply_order_facts,
            apply_product_event,
        )

        refs = ReferenceData()
        views, products, orders = [], [], []
        for e in self.stream.events:
            env = {**e.envelope, "payload": e.envelope["payload"][1]}
            if env["event_type"] == "OrderCreated":
                views.append(apply_order_event(None, env, refs))
                orders.append(apply_order_facts(None, env))
            elif env["event_type"] == "ProductCreated":
                products.append(apply_product_event(None, env))
        return views, products, orders

    def timed_batches(self, label: str, unit: str, batches: Iterable[int], write: Callable[[int], int]) -> range:
        """Run write(i) for each batch until done or --ceiling-seconds pass; records documents per second and
        returns the batches written."""
        limit = self.args.ceiling_seconds
        done, count, t0 = 0, 0, time.perf_counter()
        for i in batches:
            done += write(i)
            count += 1
            if time.perf_counter() - t0 > limit:
                break
        self.results.ceilings[label] = (done, time.perf_counter() - t0, unit)
        return range(count)

    def run_ceilings(self) -> None:
        from elasticsearch.helpers import bulk as es_bulk
        from pymongo import ReplaceOne

        from agents.sales_stats import APPLY_CONTRIBUTIONS, DAY_TTL_S, LEDGER_TTL_S
        from agents.search_bulk import bulk_failures
        from app.read_models import PRODUCTS_MAPPING
        from connectors import elasticsearch, mongo, redis
        from domain.views import order_summary, sales_contributions

        views, products, orders = self.sample_documents()
        size, total = 1000, self.args.ceiling_docs
        batches = range(0, max(1, total // size))

        def nth(items: list, i: int, k: int, salt: str) -> dict:
            doc = dict(items[(i * size + k) % len(items)])
            doc["_id"] = f"{salt}-{i * size + k}"
            return doc

        client = mongo.mongo_client(self.settings)
        try:
            coll = client[self.settings.mongo_database]["ceiling_order_views"]

            def mongo_write(status: str) -> Callable[[int], int]:
                def write(i: int) -> int:
                    docs = [{**nth(views, i, k, "order"), "status": status} for k in range(size)]
                    coll.bulk_write([ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in docs], ordered=False)
                    return len(docs)
                return write

            written = self.timed_batches("MongoDB ReplaceOne upserts, new _ids", "docs", batches,
                                         mongo_write("pending"))
            self.timed_batches("MongoDB ReplaceOne upserts, existing _ids", "docs", written, mongo_write("shipped"))
            history = client[self.settings.mongo_database]["ceiling_customer_history"]

            def history_write(i: int) -> int:
                docs = [nth(views, i, k, "order") for k in range(size)]
                history.bulk_write([ReplaceOne({"_id": f"{d['customer_id']}:{d['_id']}"}, {
                    "customer_id": d["customer_id"], **order_summary(d)}, upsert=True) for d in docs], ordered=False)
                return len(docs)

            self.timed_batches("MongoDB ReplaceOne upserts (customer history entries)", "docs", batches, history_write)

            def insert_write(i: int) -> int:
                coll.insert_many([nth(views, i, k, "inserted") for k in range(size)], ordered=False)
                return size

            self.timed_batches("MongoDB insert_many, new _ids (for reference)", "docs", batches, insert_write)
            split = async_split_replace(self.settings, coll.name, [[nth(views, i, k, "order") for k in range(size)]
                                                                   for i in written])
            self.results.ceilings["MongoDB split into 4 concurrent bulk writes, ReplaceOne existing (for reference)"] = (
                split[0], split[1], "docs")
            coll.drop()
            history.drop()
        finally:
            client.close()

        es = elasticsearch.es_client(self.settings, request_timeout=120)
        index = f"{self.settings.es_products_alias}-ceiling"
        try:
            es.indices.create(index=index, mappings=PRODUCTS_MAPPING,
                              settings={"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "1s"})

            def es_write(stock: int) -> Callable[[int], int]:
                def write(i: int) -> int:
                    actions: list[dict] = []
                    for k in range(size):
                        doc = nth(products, i, k, "product")
                        pid = doc.pop("_id")
                        doc.update(product_id=pid, stock=stock, in_stock=stock > 0)
                        actions.append({"_op_type": "update", "_index": index, "_id": pid, "retry_on_conflict": 3,
                                        "doc": {k2: v for k2, v in doc.items() if k2 != "purchase_count"},
                                        "upsert": doc})
                    _, errors = es_bulk(es, actions, chunk_size=size, raise_on_error=False, refresh=False)
                    if errors:
                        pid, error = next(iter(bulk_failures(errors).items()))
                        raise BenchError(f"Elasticsearch _bulk rejected {len(errors)} document(s), {pid}: {error}")
                    return size
                return write

            written = self.timed_batches("Elasticsearch _bulk update+upsert, new ids", "docs", batches,
                                         es_write(100))
            self.timed_batches("Elasticsearch _bulk update, existing ids", "docs", written, es_write(99))
        finally:
            es.options(ignore_status=404).indices.delete(index=index)
            es.close()

        r = redis.redis_client(self.settings)
        try:
            script = r.register_script(APPLY_CONTRIBUTIONS)
            prefix = "ceiling:sales:"

            def lua_write(i: int) -> int:
                args: list[Any] = [prefix, LEDGER_TTL_S, DAY_TTL_S]
                for k in range(size):
                    facts = orders[(i * size + k) % len(orders)]
                    contributions = sales_contributions(facts)
                    args += [f"order-{i * size + k}", 0, 1, json.dumps(facts.as_ledger()), len(contributions)]
                    for composite, amount in contributions.items():
                        args += [*composite.split("|", 1), amount]
                script(args=args)
                return size

            def hincrby_write(i: int) -> int:
                pipe = r.pipeline(transaction=False)
                for k in range(size):
                    for composite, amount in sales_contributions(orders[(i * size + k) % len(orders)]).items():
                        key, fld = composite.split("|", 1)
                        pipe.hincrby(f"ceiling:hincr:{key}", fld, amount)
                pipe.execute()
                return size

            self.timed_batches("Redis sales Lua script, 1,000 orders per call", "orders", batches, lua_write)
            self.timed_batches("Redis pipelined HINCRBY, 1,000 orders per round trip", "orders", batches,
                               hincrby_write)
            for key in r.scan_iter("ceiling:*", count=1000):
                r.unlink(key)
        finally:
            r.close()

    # -- teardown ---------------------------------------------------------------------------------

    def stop_children(self) -> None:
        for child in self.children:
            try:
                child.stop(timeout=20) if hasattr(child, "stop") else stop(child)
            except Exception as exc:  # already gone, or would not die: nothing more to do
                print(f"stopping a child process: {exc}", file=sys.stderr)

    def cleanup(self) -> list[str]:
        """Delete everything the run created; returns one line per thing that could not be deleted."""
        from connectors import elasticsearch, kafka, mongo, redis, registry
        from schemas import TOPICS, subject_for

        problems: list[str] = []

        def attempt(what: str, fn: Callable[[], Any]) -> None:
            try:
                fn()
            except Exception as exc:
                problems.append(f"{what}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")

        admin = kafka.admin_client(self.settings)

        def topics() -> None:
            names = [t for t in admin.list_topics(timeout=10).topics if self.iso.marker in t]
            kafka.delete_topics(self.settings, names)

        def groups() -> None:
            listed = admin.list_consumer_groups(request_timeout=10).result(15)
            names = [g.group_id for g in listed.valid if self.iso.marker in g.group_id]
            for fut in (admin.delete_consumer_groups(names, request_timeout=10).values() if names else []):
                try:
                    fut.result(15)
                except Exception as exc:   # a group that never committed has nothing to delete
                    if "GROUP_ID_NOT_FOUND" not in str(exc):
                        raise

        def subjects() -> None:
            client = registry.registry_client(self.settings)
            for topic in TOPICS:
                subject = subject_for(self.iso.prefix + topic)
                try:
                    client.delete_subject(subject)
                    client.delete_subject(subject, permanent=True)
                except Exception as exc:
                    if "40401" not in str(exc) and "not found" not in str(exc).lower():
                        raise

        def indices() -> None:
            es = elasticsearch.es_client(self.settings)
            try:
                found = es.options(ignore_status=404).indices.get(index=f"{self.settings.es_products_alias}*")
                for name in (found.body if hasattr(found, "body") else found):
                    if name.startswith(self.settings.es_products_alias):
                        es.indices.delete(index=name)
            finally:
                es.close()

        def databases() -> None:
            client = mongo.mongo_client(self.settings)
            try:
                for name in (self.settings.mongo_database, f"{self.settings.mongo_database}_naive"):
                    client.drop_database(name)
            finally:
                client.close()

        def redis_db() -> None:
            client = redis.redis_client(self.settings)
            try:
                client.flushdb()
            finally:
                client.close()

        def data_dirs() -> None:
            for app_id in self.app_ids:
                shutil.rmtree(ROOT / f"{app_id}-data", ignore_errors=True)

        for what, fn in (("topics", topics), ("consumer groups", groups), ("schema subjects", subjects),
                         ("search indices", indices), ("MongoDB databases", databases), ("Redis db 1", redis_db),
                         ("Faust data directories", data_dirs)):
            attempt(what, fn)
        return problems

    # -- report -----------------------------------------------------------------------------------

    def report(self, loaded: Loaded) -> bool:
        res = self.results
        ok = True
        print()
        print("(a) pipeline, end to end into every sink (time from the group's partition assignment to the "
              "commit of its topics' end offsets):")
        for name, run in res.projections.items():
            status = "" if run.done_at else "  NOT CAUGHT UP"
            print(f"  {name:<15} {fmt(run.events):>8} events in {run.seconds:6.1f}s = {fmt(run.events_per_s):>6} "
                  f"events/s; {run.batches[0]} batches of {run.batches[1]:.0f} on average; worker CPU "
                  f"{run.cpu_s:.1f}s ({fmt(rate(run.events, run.cpu_s))} events per CPU second){status}")
        if res.overall:
            events, seconds = res.overall
            print(f"  overall         {fmt(events):>8} events (order + product; no projection reads "
                  f"customer-events) in every sink in {seconds:.1f}s = {fmt(rate(events, seconds))} events/s; "
                  f"{res.pipeline_wall_s:.1f}s from launch; machine CPU {res.pipeline_busy_pct:.0f}% busy")
        if res.pipeline_cpu:
            window = (os.cpu_count() or 1) * res.pipeline_wall_s
            print(f"  CPU while the pipeline ran ({os.cpu_count()} cores x {res.pipeline_wall_s:.0f}s = {window:.0f} "
                  "core-seconds): " + ", ".join(f"{role} {sec:.0f}s ({100 * sec / window:.0f}%)" for role, sec in
                                                sorted(res.pipeline_cpu.items(), key=lambda kv: -kv[1]) if sec >= 0.5))
        for what, good, detail in res.checks:
            ok &= good
            print(f"  {'ok  ' if good else 'FAIL'} {what}: {detail}")
        print("  enrichment: one write-model query per batch; it finds none of the generated products or "
              "customers (the write model is left clean), so names in the views are null")
        print("(b) naive baseline, in process, one event at a time, one write per event "
              f"(first {fmt(self.args.naive)} order events):")
        for label, (n, s) in res.naive.items():
            print(f"  {label:<42} {fmt(rate(n, s)):>6} events/s ({n} in {s:.1f}s)")
        naive = None
        if res.naive:
            n_total = next(iter(res.naive.values()))[0]
            naive = rate(n_total, sum(s for _, s in res.naive.values()))
            print(f"  {'both (order-events into all its sinks)':<42} {fmt(naive):>6} events/s")
        print(f"(c) sink ceilings, batches of 1,000, no pipeline (each at most {self.args.ceiling_seconds:.0f}s):")
        for label, (n, s, unit) in res.ceilings.items():
            print(f"  {label:<55} {fmt(rate(n, s)):>7} {unit}/s ({fmt(n)} in {s:.1f}s)")
        print("(d) bare consumers of the order-events bench topic (decode + count):")
        if res.faust:
            n, s, wall = res.faust
            print(f"  Faust agent (take_events {self.settings.projection_batch_size}), own process  "
                  f"{fmt(rate(n, s)):>7} events/s ({fmt(n)} in {s:.1f}s; {wall:.1f}s from launch)")
        if res.consumer:
            n, s = res.consumer
            print(f"  confluent-kafka Consumer, in process          {fmt(rate(n, s)):>7} events/s "
                  f"({fmt(n)} in {s:.1f}s)")

        print()
        print("summary against the targets:")
        rows = []
        overall = rate(*res.overall) if res.overall else None
        sinks = {}
        for sink, starts in (("MongoDB ReplaceOne", "MongoDB ReplaceOne"), ("Elasticsearch _bulk", "Elasticsearch"),
                             ("Redis Lua", "Redis sales Lua")):
            parts = [(n, s) for label, (n, s, _) in res.ceilings.items() if label.startswith(starts)]
            if parts:
                sinks[sink] = rate(sum(n for n, _ in parts), sum(s for _, s in parts))
        faust = rate(res.faust[0], res.faust[1]) if res.faust else None
        if overall is not None and faust is not None and sinks:
            slowest = min(sinks, key=sinks.get)
            bound = min(faust, sinks[slowest])
            which = "bare Faust" if faust <= sinks[slowest] else slowest
            rows.append((f"pipeline vs {TARGET_FRACTION_OF_CEILING} x min(bare Faust {fmt(faust)}, slowest sink "
                         f"{fmt(sinks[slowest])})", overall, TARGET_FRACTION_OF_CEILING * bound,
                         f"bound: {which}; sinks " + ", ".join(f"{k} {fmt(v)}/s" for k, v in sinks.items())))
        if overall is not None and naive:
            rows.append((f"pipeline vs {TARGET_TIMES_NAIVE} x naive ({fmt(naive)})", overall,
                         TARGET_TIMES_NAIVE * naive, ""))
        for name, run in res.projections.items():
            rows.append((f"worker {name} vs {fmt(TARGET_PER_WORKER)} events/s per process", run.events_per_s,
                         TARGET_PER_WORKER, ""))
        print(f"  {'measure':<78} {'events/s':>9} {'target':>9} {'ratio':>6}")
        for label, value, target, note in rows:
            ratio = value / target if target else float("nan")
            print(f"  {label:<78} {fmt(value):>9} {fmt(target):>9} {ratio:6.2f}  {'met' if ratio >= 1 else 'MISSED'}"
                  + (f"  ({note})" if note else ""))
        print("  (sink ceilings are in documents or orders per second; the pipeline writes fewer documents than "
              "it reads events, since each batch writes each aggregate once)")
        return ok


def async_split_replace(settings, collection: str, batches: list[list[dict]]) -> tuple[int, float]:
    """ReplaceOne upserts of existing documents the way the order-views projection writes them
    (agents.read_store.bulk_write_unordered: each batch split into concurrent parts)."""
    import asyncio

    from pymongo import AsyncMongoClient, ReplaceOne

    from agents.read_store import bulk_write_unordered

    async def run() -> tuple[int, float]:
        client = AsyncMongoClient(settings.mongo_url, serverSelectionTimeoutMS=5000, tz_aware=True)
        try:
            coll = client[settings.mongo_database][collection]
            done, t0 = 0, time.perf_counter()
            for docs in batches:
                await bulk_write_unordered(coll, [(d["_id"], ReplaceOne({"_id": d["_id"]}, {**d, "status": "delivered"},
                                                                        upsert=True)) for d in docs])
                done += len(docs)
            return done, time.perf_counter() - t0
        finally:
            await client.close()

    return asyncio.run(run())


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events to preload (all topics)")
    parser.add_argument("--naive", type=int, default=5000, help="order events for the naive baseline")
    parser.add_argument("--ceiling-docs", type=int, default=20_000, help="documents per sink-ceiling pass")
    parser.add_argument("--ceiling-seconds", type=float, default=20.0, help="longest sink-ceiling pass")
    parser.add_argument("--batch-size", type=int, default=0, help="PROJECTION_BATCH_SIZE for the workers "
                                                                   "(default: the setting)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="longest wait for any drain, seconds")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--profile", metavar="DIR", help="record each worker with py-spy into DIR")
    parser.add_argument("--skip", default="", help="comma-separated steps to skip: pipeline,faust,consumer,naive,"
                                                   "ceilings")
    parser.add_argument("--keep", action="store_true", help="leave topics, indices and databases in place")
    args = parser.parse_args(argv)
    if args.events < 1000:
        parser.error("--events must be at least 1000")

    bench = Bench(args)
    load = os.getloadavg()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.2f} at start; every "
          f"server of the stack on the same machine; run {bench.iso.run} (topics {bench.iso.prefix}*, MongoDB "
          f"{bench.settings.mongo_database}, Redis db 1, alias {bench.settings.es_products_alias})")
    print(f"command: python -m benchmarks.projections {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    ok = True
    loaded = None
    try:
        bench.check_services()
        bench.prepare()
        loaded = bench.preload()
        steps = (("pipeline", "pipeline", bench.run_pipeline, (loaded,)),
                 ("faust", "bare Faust agent", bench.run_faust_drain, ()),
                 ("consumer", "bare consumer", bench.run_bare_consumer, ()),
                 ("naive", "naive baseline", bench.run_naive, ()),
                 ("ceilings", "sink ceilings", bench.run_ceilings, ()))
        skip = {s.strip() for s in args.skip.split(",") if s.strip()}
        for key, what, step, step_args in steps:
            if key in skip:
                continue
            try:
                step(*step_args)
            except BenchError as exc:
                ok = False
                print(f"error in {what}: {exc}", flush=True)
            except Exception as exc:  # a service error: report it in one line and go on with the next step
                ok = False
                print(f"error in {what}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}", flush=True)
        ok &= bench.report(loaded)
    except BenchError as exc:
        print(f"bench-projections: {exc}", file=sys.stderr)
        ok = False
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        ok = False
    finally:
        bench.stop_children()
        if args.keep:
            print(f"kept: topics {bench.iso.prefix}*, database {bench.settings.mongo_database}, Redis db 1, "
                  f"indices {bench.settings.es_products_alias}*")
        else:
            problems = bench.cleanup()
            print("cleanup: " + ("; ".join(problems) if problems else
                                 "bench topics, consumer groups, schema subjects, indices, databases, Redis db 1 and "
                                 "Faust data directories deleted"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
