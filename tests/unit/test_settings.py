from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.settings import Settings
from connectors import ServiceUnavailable


def test_defaults_point_at_the_local_stack(monkeypatch):
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "MONGO_URL", "TOPIC_PARTITIONS"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert s.mongo_url.startswith("mongodb://127.0.0.1:")
    assert s.topic_partitions == 6


def test_environment_overrides_each_field(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-0:9092,kafka-1:9092")
    monkeypatch.setenv("TOPIC_PARTITIONS", "12")
    monkeypatch.setenv("ELASTICSEARCH_URL", "http://es:9200")
    s = Settings()
    assert (s.kafka_bootstrap_servers, s.topic_partitions, s.elasticsearch_url) == (
        "kafka-0:9092,kafka-1:9092", 12, "http://es:9200")


def test_invalid_value_is_rejected_naming_the_field(monkeypatch):
    monkeypatch.setenv("TOPIC_PARTITIONS", "zero")
    with pytest.raises(ValidationError, match="topic_partitions"):
        Settings()


def test_unreachable_message_is_one_line():
    exc = ServiceUnavailable("kafka", "127.0.0.1:9092", "Connection refused\n  retrying\tlater")
    assert str(exc) == "kafka unreachable at 127.0.0.1:9092: Connection refused retrying later"


def test_a_workers_producer_lingers_as_configured():
    """Changelog records gather for WORKER_PRODUCER_LINGER_MS into one produce request (Faust's own is 0)."""
    from app.settings import Settings
    from agents.worker import faust_app

    assert faust_app("order-views", Settings(worker_producer_linger_ms=50)).producer.linger_ms == 50
    assert faust_app("order-views", Settings(worker_producer_linger_ms=0)).producer.linger_ms == 0
