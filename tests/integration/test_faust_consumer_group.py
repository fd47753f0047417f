"""A Faust agent in a consumer group receives keyed records in per-key order, each key on one partition."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from connectors import kafka

KEYS = 24
PER_KEY = 25


def _committed_total(admin: AdminClient, group: str) -> int:
    from confluent_kafka import ConsumerGroupTopicPartitions
    try:
        result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(5)
    except Exception:
        return 0
    return sum(tp.offset for tp in result.topic_partitions if tp.offset > 0)


def test_faust_agent_consumes_keyed_records_in_order_per_partition(stack, tmp_path: Path):
    run = uuid.uuid4().hex[:8]
    topic, app_id, out = f"probe-orders-{run}", f"probe-app-{run}", tmp_path / "consumed.jsonl"
    kafka.ensure_topics(stack, [kafka.TopicSpec(topic, partitions=4)])
    env = {**os.environ, "PROBE_APP_ID": app_id, "PROBE_TOPIC": topic, "PROBE_OUT": str(out)}
    worker = subprocess.Popen([sys.executable, "-m", "tests.integration.faust_probe_app", "worker", "-l", "warn"],
                              env=env, cwd=Path(__file__).resolve().parents[2],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        producer = Producer({**kafka.base_config(stack), "enable.idempotence": True, "linger.ms": 5})
        for seq in range(1, PER_KEY + 1):
            for k in range(KEYS):
                producer.produce(topic, key=f"order-{k}", value=f"order-{k}:{seq}")
        assert producer.flush(15) == 0

        deadline = time.monotonic() + 120
        lines: list[dict] = []
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise AssertionError(f"faust worker exited {worker.returncode}: {worker.stdout.read()[-2000:]}")
            lines = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
            if len(lines) >= KEYS * PER_KEY:
                break
            time.sleep(0.5)
        assert len(lines) == KEYS * PER_KEY, f"consumed {len(lines)} of {KEYS * PER_KEY}"

        by_key: dict[str, list[dict]] = defaultdict(list)
        for rec in lines:
            by_key[rec["key"]].append(rec)
        assert len(by_key) == KEYS
        for key, recs in by_key.items():
            assert len({r["partition"] for r in recs}) == 1, f"{key} spread over partitions"
            assert [int(r["value"].split(":")[1]) for r in recs] == list(range(1, PER_KEY + 1))
            offsets = [r["offset"] for r in recs]
            assert offsets == sorted(offsets)
        assert len({recs[0]["partition"] for recs in by_key.values()}) > 1, "all keys landed on one partition"

        admin = kafka.admin_client(stack)
        deadline = time.monotonic() + 60
        while _committed_total(admin, app_id) < KEYS * PER_KEY and time.monotonic() < deadline:
            time.sleep(1)
        assert _committed_total(admin, app_id) == KEYS * PER_KEY, "consumer group did not commit every offset"
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        kafka.delete_topics(stack, [topic])
