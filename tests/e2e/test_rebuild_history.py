"""A rebuild after the oldest events have left the topic: refused (exit 2, one line, nothing created), or
built on purpose with --allow-partial. Its own topics, since it deletes records from them."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

from confluent_kafka import TopicPartition

from app.operations.setup import EVENT_TOPIC_CONFIG
from app.settings import Settings
from connectors import kafka
from tests.e2e.conftest import make_client
from tests.e2e.pipeline import Pipeline, place_orders

ROOT = Path(__file__).resolve().parents[2]


def cqrs_rebuild(pipe: Pipeline, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", "rebuild", "order-views", "--grace-s", "0", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env={**os.environ, **pipe.env, "PROJECTION_GROUP_SUFFIX": f"-{pipe.name}"})


def test_event_topics_keep_every_event(isolated, settings: Settings) -> None:
    from confluent_kafka.admin import ConfigResource, ResourceType

    topic = isolated["prefix"] + "order-events"
    admin = kafka.admin_client(settings)
    kafka.ensure_topics(settings, [kafka.TopicSpec(topic, settings.topic_partitions, 1, EVENT_TOPIC_CONFIG)])
    found = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)])
    config = next(iter(found.values())).result(10)
    assert (config["retention.ms"].value, config["retention.bytes"].value) == ("-1", "-1")


def test_rebuild_refuses_a_history_the_topics_no_longer_hold(isolated, settings: Settings, token: str) -> None:
    pipeline = Pipeline(settings, isolated["prefix"], f"hist{uuid.uuid4().hex[:6]}", 5, isolated["log_dir"])
    place_orders(make_client(isolated["gateway"].url, token), random.Random(5), 12, isolated["made"])
    topic = isolated["prefix"] + "order-events"
    ends = kafka.end_offsets(settings, [(topic, p) for p in range(settings.topic_partitions)])
    (trimmed, end), *_ = [(tp, e) for tp, e in sorted(ends.items()) if e >= 2]
    admin = kafka.admin_client(settings)  # kept alive until the answer is in
    deleted = admin.delete_records([TopicPartition(topic, trimmed[1], end - 1)])
    next(iter(deleted.values())).result(30)  # as retention would: the partition now starts at end - 1
    try:
        before = pipeline.collections()
        refused = cqrs_rebuild(pipeline)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        line, = refused.stderr.strip().splitlines()
        assert line.startswith("cqrs rebuild: order-views: ") and f"{topic}[{trimmed[1]}] offsets 0..{end - 2}" in line
        assert "--allow-partial" in line
        assert pipeline.collections() == before  # nothing was created

        partial = cqrs_rebuild(pipeline, "--allow-partial")
        assert partial.returncode == 0, partial.stdout + partial.stderr
        assert "building a partial version on purpose (--allow-partial)" in partial.stdout
        assert "switched: order-views serves version" in partial.stdout
    finally:
        pipeline.cleanup()
