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
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from app.operations import processes
from benchmarks.baselines import Baselines
from benchmarks.measures import (PY_SPY, PY_SPY_MISSING, BusyMeter, cpu_by_role, cpu_seconds, fmt, probe_note,
                                 process_cpu, py_spy, rate)
from benchmarks.projection_checks import Checks
from benchmarks.projection_cleanup import Cleanup
from benchmarks.projection_report import Report
from benchmarks.projection_run import BenchError, Isolation, Loaded, ProjectionRun, Results
from benchmarks.sink_ceilings import SinkCeilings
from domain.views import apply_product_event

PROGRESS_EVERY_S = 10.0


class Bench(Baselines, SinkCeilings, Checks, Report, Cleanup):
    """One run: preload, the pipeline (a), the baselines and ceilings (b-d), the checks and the report."""

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
        from app.operations.setup import prepare_event_codecs

        self.flush_redis_db()
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
        searched: dict[str, dict] = {}  # the search documents the product events imply
        for e in stream.events:
            kind, p = e.envelope["event_type"], e.envelope["payload"][1]
            if e.topic == "product-events":
                searched[e.key] = apply_product_event(searched.get(e.key), {**e.envelope, "payload": p})
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
                      seconds, searched)

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

        from agents.projections import PROJECTIONS, TOPICS
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
                    processes.stop_process(proc, 20.0)
        self.results.pipeline_wall_s = max(r.done_at for r in runs.values()) - launched
        start = min(r.assigned_at for r in runs.values())
        projected = sum(n for t, n in loaded.per_topic.items() if t in {t for ts in TOPICS.values() for t in ts})
        self.results.overall = (projected, max(r.done_at for r in runs.values()) - start)
        self.verify(loaded, dlq_before)

    def start_profilers(self, workers: dict) -> list[subprocess.Popen]:
        """py-spy (sampling, from outside) on each worker until it exits: collapsed stacks per projection."""
        out = Path(self.args.profile)
        out.mkdir(parents=True, exist_ok=True)
        procs = [py_spy(w.proc.pid, out / f"{name}.txt", self.log_dir / f"py-spy-{name}.log")
                 for name, w in workers.items()]
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

    # -- (b) naive baseline -----------------------------------------------------------------------

    # -- report -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    if args.profile and not PY_SPY.exists():
        parser.error(PY_SPY_MISSING)
    return args


def print_run_header(bench: Bench, argv: list[str] | None) -> None:
    """The machine, the run's isolated names and the command line, so a report can be read on its own."""
    load = os.getloadavg()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.2f} at start, "
          f"{probe_note()}; every "
          f"server of the stack on the same machine; run {bench.iso.run} (topics {bench.iso.prefix}*, MongoDB "
          f"{bench.settings.mongo_database}, Redis db 1, alias {bench.settings.es_products_alias})")
    print(f"command: python -m benchmarks.projections {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())


def run_steps(bench: Bench, loaded: Loaded) -> bool:
    """(a)-(d) in turn, less those --skip names; a failing step is reported in one line and the next still
    runs. False if any step failed."""
    ok = True
    steps = (("pipeline", "pipeline", bench.run_pipeline, (loaded,)),
             ("faust", "bare Faust agent", bench.run_faust_drain, ()),
             ("consumer", "bare consumer", bench.run_bare_consumer, ()),
             ("naive", "naive baseline", bench.run_naive, ()),
             ("ceilings", "sink ceilings", bench.run_ceilings, ()))
    skip = {s.strip() for s in bench.args.skip.split(",") if s.strip()}
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
    return ok


def tear_down(bench: Bench) -> None:
    """Stop the children, then delete what the run created unless --keep."""
    bench.stop_children()
    if bench.args.keep:
        print(f"kept: topics {bench.iso.prefix}*, database {bench.settings.mongo_database}, Redis db 1, "
              f"indices {bench.settings.es_products_alias}*")
    else:
        problems = bench.cleanup()
        print("cleanup: " + ("; ".join(problems) if problems else
                             "bench topics, consumer groups, schema subjects, indices, databases, Redis db 1 and "
                             "Faust data directories deleted"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    print_run_header(bench, argv)
    ok = True
    try:
        bench.check_services()
        bench.prepare()
        loaded = bench.preload()
        ok = run_steps(bench, loaded)
        ok &= bench.report(loaded)
    except BenchError as exc:
        print(f"bench-projections: {exc}", file=sys.stderr)
        ok = False
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        ok = False
    finally:
        tear_down(bench)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
