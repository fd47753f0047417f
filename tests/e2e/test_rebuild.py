"""`cqrs rebuild` run as a user runs it (a subprocess, output not a terminal), against an isolated pipeline
whose live workers keep projecting and whose query API keeps serving: for each projection the new version
equals the truth from the write model, reads and live writes move to it, the old version is dropped
after its grace period (or kept), an interrupted rebuild resumes, and a second rebuild of the same
projection is refused."""
from __future__ import annotations

import os
import pty
import random
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from agents.read_model_versions import ServingRecord
from domain.read_models import CUSTOMER_HISTORY, ORDER_VIEWS, READ_MODEL_VERSIONS, order_collections
from app.operations.rebuild import lock_key, rebuild_group
from app.settings import Settings
from connectors import elasticsearch, kafka, mongo, postgres, redis
from tests.e2e.conftest import create_customer, create_order, create_product, make_client, wait_until
from tests.e2e.pipeline import SETTLE_S, Pipeline, check_against_truth, place_orders, truth

ROOT = Path(__file__).resolve().parents[2]
REBUILD_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def pipeline(isolated, settings: Settings, token: str) -> Iterator[Pipeline]:
    """Live workers of every projection over some history, under the consumer groups `-live`."""
    pipe = Pipeline(settings, isolated["prefix"], f"rebuild{uuid.uuid4().hex[:6]}", 8, isolated["log_dir"])
    client = make_client(isolated["gateway"].url, token)
    place_orders(client, random.Random(11), 25, isolated["made"])
    pipe.start_all("live")
    pipe.wait_caught_up("live")
    yield pipe
    pipe.stop()
    pipe.cleanup()


def rebuild_env(pipe: Pipeline) -> dict[str, str]:
    """The pipeline's settings, and rebuild consumer groups of its own (`cqrs-<p>-rebuild-vN-<name>`)."""
    return {**os.environ, **pipe.env, "PROJECTION_GROUP_SUFFIX": f"-{pipe.name}"}


def cqrs_rebuild(pipe: Pipeline, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", "rebuild", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=REBUILD_TIMEOUT_S, env={**rebuild_env(pipe), **env})


def serving(pipe: Pipeline, projection: str) -> ServingRecord:
    client = mongo.mongo_client(pipe.settings)
    try:
        doc = mongo.read_database(pipe.settings, client)[READ_MODEL_VERSIONS].find_one({"_id": projection})
        return ServingRecord.from_document(projection, doc)
    finally:
        client.close()


class Traffic(threading.Thread):
    """Orders placed through the gateway and read back through the query API, continuously until
    stopped: every read must answer 200, from the view or (while the projection lags) the write model."""

    def __init__(self, client: httpx.Client, made: dict, query_url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.client, self.made = client, made
        self.query = make_client(query_url, token)
        self.stop_flag = threading.Event()
        self.failures: list[str] = []
        self.reads: dict[str, int] = {}
        self.customer = create_customer(client, name="Rebuild Traffic")
        self.product = create_product(client, price="12.50", stock=100_000, name="Rebuild product", category="Test")
        made["customers"].append(self.customer)
        made["products"].append(self.product)

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                oid = create_order(self.client, self.customer, [(self.product, 1)])["order_id"]
                self.made["orders"].append(oid)
                for order in (oid, self.made["orders"][0]):
                    answer = self.query.get(f"/api/orders/{order}")
                    if answer.status_code != 200:
                        self.failures.append(f"GET /api/orders/{order}: {answer.status_code} {answer.text[:200]}")
                    else:
                        freshness = answer.json()["freshness"]
                        self.reads[freshness] = self.reads.get(freshness, 0) + 1
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.failures.append(repr(exc))
            time.sleep(0.05)

    def finish(self) -> None:
        self.stop_flag.set()
        self.join(timeout=30)
        self.query.close()
        assert not self.failures, f"commands or reads failed during the rebuild: {self.failures[0]}"


def test_order_views_rebuild_switches_reads_and_live_writes_under_traffic(pipeline, isolated, settings, token,
                                                                         spawn_query_api):
    api = spawn_query_api("rebuild", MONGO_DATABASE=pipeline.settings.mongo_database,
                          ES_PRODUCTS_ALIAS=pipeline.settings.es_products_alias, REDIS_URL=pipeline.env["REDIS_URL"],
                          TOPIC_PREFIX=isolated["prefix"], PROJECTION_GROUP_SUFFIX="-live")
    client = make_client(isolated["gateway"].url, token)
    traffic = Traffic(client, isolated["made"], api.base_url, token)
    traffic.start()
    try:
        done = cqrs_rebuild(pipeline, "order-views", "--grace-s", "2", "--batch", "50", "--checkpoint-s", "0.2")
    finally:
        traffic.finish()
    out = done.stdout
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rebuilding order-views version 2 (serving: version 1)" in out
    assert "order-views v2 replay: 0/" in out and "order-views v2 replay: done" in out   # plain lines, no bar
    assert "switched: order-views serves version 2" in out and "dropped version 1" in out
    assert "\x1b[" not in out
    from_views = traffic.reads.get("current", 0) + traffic.reads.get("lagging", 0)
    assert from_views > 10, f"reads during the rebuild: {traffic.reads}"

    record = serving(pipeline, "order-views")
    assert (record.serving, record.building, record.retired, record.fence_id) == (2, None, (), None)
    left = pipeline.collections()
    assert {ORDER_VIEWS, CUSTOMER_HISTORY}.isdisjoint(left), "the old version was not dropped after its grace"
    assert set(vars(order_collections(2)).values()) <= left

    after = create_order(client, traffic.customer, [(traffic.product, 3)])["order_id"]   # live worker -> v2
    isolated["made"]["orders"].append(after)
    pipeline.wait_caught_up("live")
    check_against_truth(pipeline, truth(settings, isolated["made"]))

    with make_client(api.base_url, token) as q:
        body = wait_until("the query API serving the new order from version 2",
                          lambda: (b := q.get(f"/api/orders/{after}").json()).get("freshness") == "current" and b)
        assert (body["total"], body["last_seq"]) == ("37.50", 1)
        history = q.get(f"/api/customers/{traffic.customer}/orders", params={"size": 100}).json()
        assert after in [o["order_id"] for o in history["orders"]]
    assert kafka.committed_offsets(settings, rebuild_group("order-views", 2, f"-{pipeline.name}"), [
        (pipeline.prefix + "order-events", 0)]) == {(pipeline.prefix + "order-events", 0): None}


def test_product_search_rebuild_swaps_the_alias_and_live_updates_follow(pipeline, isolated, settings, token):
    done = cqrs_rebuild(pipeline, "product-search", "--grace-s", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    alias = pipeline.settings.es_products_alias
    es = elasticsearch.es_client(pipeline.settings)
    try:
        assert list(es.indices.get_alias(name=alias)) == [f"{alias}-v2"]
        assert not es.indices.exists(index=f"{alias}-v1")
        pipeline.wait_caught_up("live")
        check_against_truth(pipeline, truth(settings, isolated["made"]))   # purchase counts included

        client = make_client(isolated["gateway"].url, token)
        product = isolated["made"]["products"][0]
        assert client.patch(f"/api/products/{product}", json={"price": "99.99"}).status_code == 202
        wait_until("the live worker's update in version 2",
                   lambda: es.get(index=f"{alias}-v2", id=product)["_source"]["price"] == 99.99, SETTLE_S)
    finally:
        es.close()


def run_in_terminal(args: list[str], env: dict[str, str], timeout: float = REBUILD_TIMEOUT_S) -> tuple[int, str]:
    """Run a command with a pseudo-terminal as its stdin, stdout and stderr, as in an operator's shell."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, cwd=ROOT, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:   # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=10), b"".join(chunks).decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_in_a_terminal_progress_is_a_bar_and_keep_old_keeps_the_previous_version(pipeline):
    alias = pipeline.settings.es_products_alias
    es = elasticsearch.es_client(pipeline.settings)
    try:
        (before,) = es.indices.get_alias(name=alias)
        old = int(before.rsplit("-v", 1)[1])
        code, out = run_in_terminal([sys.executable, "-m", "app.cli", "rebuild", "product-search", "--keep-old"],
                                    {**rebuild_env(pipeline), "TERM": "xterm-256color", "COLUMNS": "120"})
        assert code == 0, out
        assert "\x1b[" in out and "━" in out, f"no progress bar drawn in a terminal: {out!r}"
        assert "events/s" in out and "ETA" in out
        assert f"switched: product-search serves version {old + 1}" in out, out
        assert f"kept version {old} (--keep-old)" in out, out
        assert list(es.indices.get_alias(name=alias)) == [f"{alias}-v{old + 1}"]
        assert es.indices.exists(index=before), "--keep-old dropped the previous version"
    finally:
        es.close()
    retired = serving(pipeline, "product-search").retired
    assert [(r["version"], r["drop_after"]) for r in retired] == [(old, None)]


def test_an_interrupted_rebuild_resumes_where_it_stopped(pipeline, isolated, settings):
    group = rebuild_group("order-views", 3, f"-{pipeline.name}")
    partitions = [(pipeline.prefix + "order-events", p) for p in range(settings.topic_partitions)]
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "rebuild", "order-views", "--max-rate", "25",
                             "--batch", "5", "--checkpoint-s", "0.2", "--cold-after", "1"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=rebuild_env(pipeline))
    try:
        wait_until("the rebuild's first committed offsets",
                   lambda: any(kafka.committed_offsets(settings, group, partitions).values()), 60)
        assert proc.poll() is None, proc.stdout.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    record = serving(pipeline, "order-views")
    assert record.serving == 2 and record.building["version"] == 3, "the killed rebuild switched anyway"

    done = cqrs_rebuild(pipeline, "order-views", "--grace-s", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming order-views version 3 (serving: version 2)" in done.stdout
    summary = done.stdout.split("switched: order-views serves version 3; ")[1]
    replayed = int(summary.split(" events")[0].replace(",", ""))
    total = sum(kafka.end_offsets(settings, partitions).values())
    assert 0 < replayed < total, "the resumed rebuild started over instead of where it stopped"
    assert serving(pipeline, "order-views").serving == 3
    pipeline.wait_caught_up("live")
    check_against_truth(pipeline, truth(settings, isolated["made"]))


def test_a_second_rebuild_of_the_same_projection_is_refused(pipeline):
    with postgres.connect(pipeline.settings, autocommit=True, application_name="rebuild-holder-in-test") as holder:
        assert holder.execute("select pg_try_advisory_lock(%s)", (lock_key("order-views"),)).fetchone()[0]
        refused = cqrs_rebuild(pipeline, "order-views")
        assert refused.returncode == 1
        assert refused.stderr.startswith("cqrs rebuild: a rebuild of order-views is already running: "
                                         "rebuild-holder-in-test from ")
        assert refused.stdout == ""
    assert serving(pipeline, "order-views").building is None, "the refused rebuild recorded a version"


def test_sales_stats_rebuild_switches_counters_stats_and_purchase_counts(pipeline, isolated, settings, token,
                                                                         spawn_query_api):
    client = make_client(isolated["gateway"].url, token)
    place_orders(client, random.Random(12), 10, isolated["made"])
    pipeline.wait_caught_up("live")
    done = cqrs_rebuild(pipeline, "sales-stats", "--grace-s", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "switched: sales-stats serves version 2" in done.stdout and "dropped version 1" in done.stdout
    assert serving(pipeline, "sales-stats").serving == 2
    r = redis.redis_client(pipeline.settings)
    assert not list(r.scan_iter("sales:day:*")) and not list(r.scan_iter("sales:ledger:*")), \
        "version 1's keys were not dropped"
    assert list(r.scan_iter("sales:v2:day:*")) and list(r.scan_iter("sales:v2:ledger:*"))
    assert "product_stats" not in pipeline.collections() and "product_stats_v2" in pipeline.collections()

    customer, product = isolated["made"]["customers"][0], isolated["made"]["products"][0]
    isolated["made"]["orders"].append(create_order(client, customer, [(product, 2)])["order_id"])  # live -> v2
    pipeline.wait_caught_up("live")
    want = truth(settings, isolated["made"])
    check_against_truth(pipeline, want)   # product stats, purchase counts in search, day counters
    es = elasticsearch.es_client(pipeline.settings)
    try:
        doc = es.get(index=pipeline.settings.es_products_alias, id=product)["_source"]
        assert (doc["purchase_count"], doc["sales_version"]) == (want["stats"][product][0], 2)
    finally:
        es.close()
    api = spawn_query_api("rebuild-sales", MONGO_DATABASE=pipeline.settings.mongo_database,
                          ES_PRODUCTS_ALIAS=pipeline.settings.es_products_alias, REDIS_URL=pipeline.env["REDIS_URL"])
    body = make_client(api.base_url, token).get("/api/dashboard/sales").json()
    assert (body["orders"], body["revenue"]) == (want["sales"][0], f"{Decimal(want['sales'][1]).scaleb(-2):.2f}")


def test_an_unreachable_store_fails_fast_with_one_line(pipeline):
    started = time.monotonic()
    failed = cqrs_rebuild(pipeline, "order-views", MONGO_URL="mongodb://127.0.0.1:1/", CONNECT_TIMEOUT_S="1")
    assert failed.returncode == 2 and time.monotonic() - started < 30
    assert failed.stderr.startswith("cqrs rebuild: mongodb unreachable at mongodb://127.0.0.1:1/")
    assert len(failed.stderr.strip().splitlines()) == 1
