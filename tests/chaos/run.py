"""One chaos run, start to finish: an isolated pipeline (own topics, consumer groups, read database, search
alias, Redis database) fed by open-loop traffic while the faults of the plan run one after another; then
the final catch-up and the comparison of every read model with the write model.

Whatever happens (an exception, Ctrl-C), the `finally` brings every stopped service back up, stops every
process it started and drops the isolated read models, topics and consumer groups.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.operations import processes
from agents.projections import PROJECTIONS, consumer_group
from app.settings import Settings
from app.http.identity import issue_token
from domain.access import Role
from connectors import postgres
from connectors import redis as redis_connector
from tests.chaos.cached_reads import check_cached_reads
from tests.chaos.config import ChaosConfig
from tests.chaos.faults import FaultRunner, plan
from tests.chaos.kafka_probe import KafkaProbe
from tests.chaos.guard import RUN_ENV, Guard, record_isolation
from tests.chaos.progress import GroupProgress
from tests.chaos.report import ChaosResult
from tests.chaos.stack_control import StackControl
from tests.chaos.supervisor import WorkerSupervisor
from tests.chaos.timeline import RunClock
from tests.chaos.traffic import OpenLoopTraffic
from tests.chaos.workload import CommandMix, seed_catalogue
from tests.conftest import ROOT
from tests.e2e.pipeline import Mismatches, Pipeline, count_mismatches, truth

SETUP_TIMEOUT_S = 180.0
READY_TIMEOUT_S = 60.0
TAIL_S = 5.0   # traffic after the last planned fault start, at least
ISOLATED_REDIS_DBS = range(10, 16)   # the end-to-end tests use 2-9


WORKERS_READY_S = 120.0


def say(message: str) -> None:
    print(message, flush=True)


@dataclass
class Processes:
    """The gateway and query API of the run (workers belong to the supervisor), all with `env`."""

    env: dict[str, str]
    started: list[processes.AppProcess] = field(default_factory=list)

    def start(self, name: str, args: list[str], log_dir: Path, env: dict[str, str]) -> processes.AppProcess:
        app = processes.start(name, args, log_dir=log_dir, port=processes.free_port(),
                              env={"PYTHONUNBUFFERED": "1", **self.env, **env}, timeout=READY_TIMEOUT_S)
        self.started.append(app)
        return app

    def stop(self) -> None:
        for app in reversed(self.started):
            app.stop(timeout=15)


def run_chaos(config: ChaosConfig) -> ChaosResult:
    """Run the plan of `config` once and return what it measured (see report.ChaosResult)."""
    clock, rng = RunClock(), random.Random(config.seed)
    run_id = f"chaos{uuid.uuid4().hex[:6]}"
    run_dir = config.run_dir or Path(tempfile.mkdtemp(prefix=f"cqrs-{run_id}-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    result = ChaosResult(config, run_dir)
    say(f"chaos run {run_id} ({config.label}, seed {config.seed}): logs in {run_dir}")
    base = Settings()
    prefix, suffix = f"{run_id}-", f"-{run_id}"
    stack = StackControl(run_dir)
    guard = Guard.start(run_dir)
    # One subject sends the traffic of every customer and then reads every order back: its rate limit is the
    # shop's, not one caller's.
    apps = Processes({RUN_ENV: run_id, "RATE_LIMIT_PER_S": "10000", "RATE_LIMIT_BURST": "20000"})
    pipeline: Pipeline | None = None
    redis_db: int | None = None
    supervisor: WorkerSupervisor | None = None
    traffic: OpenLoopTraffic | None = None
    progress: GroupProgress | None = None
    try:
        _setup(prefix, run_dir)
        redis_db = config.redis_db if config.redis_db is not None else _empty_redis_db(base)
        record_isolation(run_dir, run_id, redis_db)
        pipeline = isolated_pipeline(run_id, redis_db, run_dir)
        gateway = apps.start("gateway", ["gateway"], run_dir, {"TOPIC_PREFIX": prefix})
        query = apps.start("query-api", ["query-api"], run_dir,
                           {"MONGO_DATABASE": pipeline.settings.mongo_database,
                            "ES_PRODUCTS_ALIAS": pipeline.settings.es_products_alias,
                            "REDIS_URL": pipeline.env["REDIS_URL"], "TOPIC_PREFIX": prefix,
                            "PROJECTION_GROUP_SUFFIX": suffix})
        # Workers run with the operator's batch settings, not the end-to-end tests' small batches.
        isolation = {k: v for k, v in pipeline.env.items() if not k.startswith("PROJECTION_BATCH")}
        worker_env = {**isolation, "PROJECTION_GROUP_SUFFIX": suffix, "PYTHONUNBUFFERED": "1", RUN_ENV: run_id,
                      **config.extra_env}
        supervisor = WorkerSupervisor(worker_env, run_dir, clock, random.Random(config.seed + 1),
                                      config.workers_per_projection, config.restart_delay_s)
        supervisor.start()
        if not supervisor.wait_ready(WORKERS_READY_S):
            raise RuntimeError(f"workers not ready within {WORKERS_READY_S:.0f}s: {supervisor.readiness()}")
        # one admin stands for the shop's staff and customers alike: the check compares every order's views
        token = issue_token(base, [Role.admin], subject=f"chaos-{run_id}", ttl_s=24 * 3600)
        with httpx.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {token}"},
                          timeout=15) as client:
            catalogue = seed_catalogue(client, rng, config.customers, config.products)
        say(f"[{clock.now():6.1f}s] gateway {gateway.base_url}, query API {query.base_url}, "
            f"{len(supervisor.slots)} workers, {config.customers} customers, {config.products} products (Redis db "
            f"{redis_db}); traffic at {config.rate:g}/s")
        traffic = OpenLoopTraffic(gateway.base_url, query.base_url, token, CommandMix(catalogue, rng), config.rate,
                                  config.read_share, config.max_in_flight, config.seed)
        traffic.start()
        progress = GroupProgress(pipeline.settings, suffix, say)
        runner = FaultRunner(config, supervisor, stack, progress, clock, rng, say)
        traffic_started = clock.now()
        _run_plan(config, runner, result, clock, traffic_started)
        remaining = traffic_started + config.duration_s - clock.now()
        if remaining > 0:
            time.sleep(remaining)
        result.traffic = traffic.stop()
        traffic = None
        say(f"[{clock.now():6.1f}s] traffic stopped: {result.traffic.sent} commands; waiting for the projections")
        supervisor.active_fault = "final catch-up"
        result.final_catch_up_s = progress.wait_caught_up(config.settle_timeout_s)
        if result.final_catch_up_s is None:
            result.final_lag = progress.describe_lag()
        result.mismatches = _verify(config, pipeline, query.base_url, token, catalogue.customers, catalogue.products, rng)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - reported in the result, cleaned up below
        result.aborted = f"{type(exc).__name__}: {exc}"
        say(f"chaos run aborted: {result.aborted}")
    finally:
        if traffic is not None:
            result.traffic = traffic.stop()
        result.restore_errors = stack.restore()
        if supervisor is not None:
            supervisor.stop()
            result.exits = list(supervisor.exits)
        apps.stop()
        if progress is not None:
            progress.close()
        drop_isolated(run_id, redis_db, run_dir)
        guard.stop()
        result.total_s = clock.now()
    return result


def _run_plan(config: ChaosConfig, runner: FaultRunner, result: ChaosResult, clock: RunClock, t0: float) -> None:
    """Faults one at a time; planned starts spread over the traffic, each no earlier than `gap_s` after the
    previous fault recovered (so a slow recovery shifts the rest, and the traffic runs until the last)."""
    faults = plan(config)
    span = max(0.0, config.duration_s - config.warmup_s - TAIL_S)
    for i, spec in enumerate(faults):
        planned = t0 + config.warmup_s + (span * i / len(faults))
        earliest = (clock.now() + config.gap_s) if result.faults else planned
        start = max(planned, earliest)
        if start > clock.now():
            time.sleep(start - clock.now())
        result.faults.append(runner.run(spec))


def _verify(config: ChaosConfig, pipeline: Pipeline, query_url: str, token: str, customers: list[str],
            products: list[str], rng: random.Random) -> Mismatches:
    """Read models vs the truth (retried for `upkeep_s` while periodic copies finish), then cached answers."""
    with postgres.connect(pipeline.settings) as conn:
        orders = [r[0] for r in conn.execute("select order_id from orders where customer_id = any(%s)", (customers,))]
    want = truth(pipeline.settings, {"customers": customers, "products": products, "orders": orders})
    deadline = time.monotonic() + config.upkeep_s
    while True:
        found = count_mismatches(pipeline, want)
        if not found.total or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    say(f"read models compared: {len(orders)} orders, {len(products)} products, {found.total} mismatch(es); "
        "reading answers through the query API")
    return found.merge(check_cached_reads(query_url, token, want, rng, config.sample_orders, config.sample_customers))


def _setup(prefix: str, run_dir: Path) -> None:
    """`cqrs setup` (as the end-to-end tests run it): migrate, create this run's topics, register schemas."""
    proc = subprocess.run([sys.executable, "-m", "app.cli", "setup"], cwd=ROOT, capture_output=True, text=True,
                          timeout=SETUP_TIMEOUT_S, env={**os.environ, "TOPIC_PREFIX": prefix})
    (run_dir / "setup.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"cqrs setup failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-300:]}")


def _empty_redis_db(base: Settings) -> int:
    """The first empty Redis database of 10-15, so concurrent runs and the end-to-end tests never share one."""
    for db in ISOLATED_REDIS_DBS:
        # the address Pipeline uses, with the stack's Redis credentials
        client = redis_connector.redis_client(base.model_copy(update={"redis_url": f"redis://127.0.0.1:6379/{db}"}))
        try:
            if client.dbsize() == 0:
                return db
        finally:
            client.close()
    raise RuntimeError(f"no empty Redis database among {ISOLATED_REDIS_DBS.start}-{ISOLATED_REDIS_DBS.stop - 1}")


def isolated_pipeline(run_id: str, redis_db: int, run_dir: Path) -> Pipeline:
    """The run's read models: database cqrs_<run id>, alias products-<run id>, its own Redis database."""
    return Pipeline(Settings(), f"{run_id}-", run_id, redis_db, run_dir)


def drop_isolated(run_id: str, redis_db: int | None, run_dir: Path) -> None:
    """Drop the run's read models (if its Redis database was chosen), topics (events and the workers'
    changelogs), consumer groups and worker data."""
    base = Settings()
    suffix = f"-{run_id}"
    groups = [consumer_group(p, suffix) for p in PROJECTIONS]
    steps = [("topics and consumer groups", lambda: _drop_kafka(run_id, groups)),
             ("unpublished outbox rows", lambda: _drop_unpublished(base, run_id))]
    if redis_db is not None:
        steps.insert(0, ("read models", isolated_pipeline(run_id, redis_db, run_dir).cleanup))
    for what, step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - cleanup is best effort; say what was left behind
            say(f"cleanup: could not drop the {what} of {run_id}: {type(exc).__name__}: {exc}")
    for projection in PROJECTIONS:
        shutil.rmtree(Path(base.worker_data_dir) / consumer_group(projection, suffix), ignore_errors=True)


def _drop_kafka(run_id: str, groups: list[str]) -> None:
    """Through a child process, like every Kafka request of a run (see kafka_probe)."""
    with closing(KafkaProbe({}, ROOT, say)) as probe:
        if probe.ask({"op": "drop", "topics_with": run_id, "groups": groups, "timeout": 30}, 90.0) is not True:
            raise RuntimeError("Kafka did not answer within 90 s")


def _drop_unpublished(settings: Settings, run_id: str) -> None:
    """Outbox rows of the run's topics that no relay published: their topics are gone, and the next relay
    (of any prefix: rows carry their topic) would wait for them forever."""
    with postgres.connect(settings, autocommit=True) as conn:
        conn.execute("delete from outbox where published_at is null and topic like %s", (f"{run_id}-%",))
