"""`cqrs lag` against the real stack, on isolated topics: a group that committed nothing lags by every
event of each partition and by a positive event time; a worker that caught up shows no lag at all;
unknown projections and an unreachable Kafka end with one line and exit code 2 — an unreachable Kafka
without the retries a slow one gets (those are unit-tested in tests/unit/test_lag.py)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, TopicPartition

from app.operations import processes
from app.settings import Settings
from app.operations.setup import prepare_event_codecs
from agents.projections import PROJECTIONS
from connectors import kafka, mongo, postgres
from schemas import TOPICS
from tests.conftest import ROOT
from tests.e2e.conftest import (create_customer, create_order, create_product, deadline, gateway_spawner,
                                make_client)
from tests.e2e.netfaults import faults

CLI_TIMEOUT_S = 30.0
PUBLISH_TIMEOUT_S = 60.0
CATCH_UP_TIMEOUT_S = 120.0


def cqrs(*args: str, env: dict[str, str], timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


def lag_json(env: dict[str, str], *args: str) -> dict:
    proc = cqrs("lag", "--json", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def wait_published(settings: Settings, prefix: str, timeout: float = PUBLISH_TIMEOUT_S) -> int:
    """Until the outbox holds no unpublished event for these topics; returns how many there are."""
    end = deadline(timeout)
    with postgres.connect(settings, autocommit=True) as conn:
        while True:
            total, unpublished = conn.execute(
                "select count(*), count(*) filter (where published_at is null) from outbox where topic like %s",
                (prefix.replace("_", r"\_") + "%",)).fetchone()
            if unpublished == 0:
                return total
            assert time.monotonic() < end, f"{unpublished} of {total} events still unpublished after {timeout}s"
            time.sleep(0.2)


def events_per_partition(settings: Settings, topic: str, timeout: float = 20.0) -> dict[int, int]:
    """Records on each partition of `topic`, counted by reading them all."""
    consumer = Consumer({**kafka.base_config(settings), "group.id": f"lag-count-{uuid.uuid4()}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        highs = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        counts = {p: 0 for p in partitions}
        positions = {p: 0 for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        end = deadline(timeout)
        while any(positions[p] < highs[p] for p in partitions):
            assert time.monotonic() < end, f"reading {topic}: at {positions}, want {highs}"
            for msg in consumer.consume(500, timeout=0.5):
                assert not msg.error(), msg.error()
                counts[msg.partition()] += 1
                positions[msg.partition()] = msg.offset() + 1
        return counts
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def isolated(setup_done: None, settings: Settings, token: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Own topics (created by the app's setup code) holding a few commands' events, and a group suffix
    whose groups have committed nothing; everything created is removed afterwards."""
    prefix = f"lg{uuid.uuid4().hex[:6]}-"
    token_part = prefix.rstrip("-")
    mine = Settings(topic_prefix=prefix)
    prepare_event_codecs(mine)
    log_dir = tmp_path_factory.mktemp("lag")
    try:
        with gateway_spawner(log_dir) as spawn:
            gateway = spawn("lag", TOPIC_PREFIX=prefix)
            gateway.wait_ready(leader=None)
            with make_client(gateway.url, token) as client:
                customers = [create_customer(client, name=f"Lag {i}") for i in range(2)]
                products = [create_product(client, stock=1000, name=f"Lag product {i}") for i in range(3)]
                for i in range(6):
                    create_order(client, customers[i % 2], [(products[i % 3], 1 + i % 2)])
            published = wait_published(settings, prefix)
        yield {"prefix": prefix, "suffix": f"-{token_part}", "log_dir": log_dir, "published": published,
               "settings": mine, "env": {"TOPIC_PREFIX": prefix, "PROJECTION_GROUP_SUFFIX": f"-{token_part}"}}
    finally:
        admin = kafka.admin_client(settings)
        kafka.delete_topics(settings, [t for t in admin.list_topics(timeout=10).topics if token_part in t])
        groups = [f"cqrs-{p}-{token_part}" for p in PROJECTIONS]
        for fut in admin.delete_consumer_groups(groups, request_timeout=10).values():
            try:
                fut.result(10)
            except Exception:  # a group never created has nothing to delete
                pass
        for group in groups:
            shutil.rmtree(ROOT / f"{group}-data", ignore_errors=True)


def test_groups_that_committed_nothing_lag_by_every_event(isolated: dict, settings: Settings):
    mine = isolated["settings"]
    counts = {isolated["prefix"] + t: events_per_partition(mine, isolated["prefix"] + t) for t in TOPICS}
    assert sum(sum(c.values()) for c in counts.values()) == isolated["published"]
    doc = lag_json(isolated["env"])

    assert {r["projection"] for r in doc["rows"]} == set(PROJECTIONS)
    for row in doc["rows"]:
        expected = counts[row["topic"]][row["partition"]]
        assert row["group"] == f"cqrs-{row['projection']}{isolated['suffix']}"
        assert row["committed"] is None and row["offset_lag"] == expected == row["end"], row
        if expected:
            assert 0 < row["event_time_lag_s"] < 600, row
        else:
            assert row["event_time_lag_s"] == 0, row
    by_projection = {t["projection"]: t for t in doc["totals"]}
    assert by_projection["order-views"]["offset_lag"] == sum(counts[isolated["prefix"] + "order-events"].values())
    assert by_projection["product-search"]["offset_lag"] == \
        sum(counts[isolated["prefix"] + "product-events"].values())
    assert by_projection["order-views"]["event_time_lag_s"] > 0


def test_a_caught_up_worker_shows_no_lag(isolated: dict, settings: Settings):
    database = f"cqrs_{isolated['prefix'].rstrip('-')}"
    env = {**isolated["env"], "MONGO_DATABASE": database, "PROJECTION_START": "earliest",
           "PROJECTION_BATCH_WAIT_S": "0.1", "PYTHONUNBUFFERED": "1"}
    worker = processes.start(f"lag-order-views-{uuid.uuid4().hex[:4]}", ["worker", "order-views"],
                             log_dir=isolated["log_dir"], env=env, ready_path=None)
    try:
        end = deadline(CATCH_UP_TIMEOUT_S)
        rows, error = [], ""
        while True:
            proc = cqrs("lag", "--json", "--projection", "order-views", env=isolated["env"])
            if proc.returncode == 0:
                rows, error = json.loads(proc.stdout)["rows"], ""
                if rows and all(r["offset_lag"] == 0 and r["event_time_lag_s"] == 0 for r in rows):
                    break
            else:
                error = proc.stderr.strip()  # a refresh may time out while the worker joins; polled again
            assert worker.proc.poll() is None, f"worker exited: {worker.log_tail()}"
            assert time.monotonic() < end, \
                f"order-views not caught up after {CATCH_UP_TIMEOUT_S}s: {rows} {error}\n{worker.log_tail()}"
            time.sleep(1.0)
        assert {r["projection"] for r in rows} == {"order-views"}
        assert any(r["end"] for r in rows)
        assert all(r["committed"] == r["end"] for r in rows if r["end"]), "an empty partition is never committed"
    finally:
        worker.stop()
        client = mongo.mongo_client(settings)
        client.drop_database(database)
        client.close()


def test_the_table_shows_every_projection_with_a_total(isolated: dict):
    proc = cqrs("lag", env=isolated["env"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["PROJECTION", "TOPIC", "PARTITION"]
    for projection in PROJECTIONS:
        assert any(line.startswith(f"{projection} ") for line in lines), projection
        assert any(line.startswith(f"{projection} total") for line in lines), projection


def test_an_isolated_group_is_inspected_with_group_suffix(isolated: dict):
    proc = cqrs("lag", "--json", "--projection", "sales-stats", f"--group-suffix=-{uuid.uuid4().hex[:6]}",
                env={"TOPIC_PREFIX": isolated["prefix"]})
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["rows"]
    assert rows and all(r["committed"] is None and r["offset_lag"] == r["end"] for r in rows)


def test_an_unknown_projection_names_the_valid_ones(isolated: dict):
    proc = cqrs("lag", "--projection", "nope", env=isolated["env"])
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "nope" in proc.stderr and all(p in proc.stderr for p in PROJECTIONS), proc.stderr


def test_unreachable_kafka_fails_fast_with_one_line(isolated: dict):
    started = time.monotonic()
    proc = cqrs("lag", env={**isolated["env"], "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}, timeout=20)
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "kafka" in proc.stderr and "127.0.0.1:9" in proc.stderr
    assert elapsed < 10, f"took {elapsed:.1f}s"


@pytest.mark.parametrize("broker", ["refusing", "silent"])
def test_a_broker_that_never_answers_is_unreachable_at_once(broker: str):
    """Nothing answers metadata: one line, exit 2, after one connect timeout — not retried like a slow
    broker (three tries would take over three connect timeouts)."""
    connect_timeout_s = 2.0
    started = time.monotonic()
    assert cqrs("lag", "--projection", "nope", env={}).returncode == 2  # no I/O: the start-up cost alone
    startup = time.monotonic() - started
    with faults() as net:
        address = f"127.0.0.1:{net.refusing() if broker == 'refusing' else net.silent().port}"
        started = time.monotonic()
        proc = cqrs("lag", "--json", env={"KAFKA_BOOTSTRAP_SERVERS": address,
                                          "CONNECT_TIMEOUT_S": str(connect_timeout_s)})
        elapsed = time.monotonic() - started
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"cqrs lag: kafka unreachable at {address}: "), proc.stderr
    assert elapsed < startup + 2 * connect_timeout_s, f"took {elapsed:.1f}s, start-up {startup:.1f}s"


def test_missing_topics_are_one_line_and_exit_2(isolated: dict):
    proc = cqrs("lag", env={"TOPIC_PREFIX": f"absent{uuid.uuid4().hex[:6]}-"})
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "missing topic" in proc.stderr, proc.stderr
