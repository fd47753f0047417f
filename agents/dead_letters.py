"""Dead-letter topic: events a projection could not decode or apply, kept with everything needed
to replay them (original key, value and headers) plus why, where from, and how often it was tried."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Protocol

from confluent_kafka import Producer

from agents.metrics import EVENTS
from connectors import ServiceUnavailable, kafka

DLQ_TOPIC = "cqrs-dead-letters"


class Settings(kafka.Settings, Protocol):
    """What dead letters need of the application's settings (passed in)."""

    topic_replication_factor: int


@dataclass
class SourceRecord:
    """A consumed Kafka record, independent of the consumer library that read it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp: float | None = None


def dead_letter_headers(record: SourceRecord, *, projection: str, reason: str, error: str,
                        attempts: int) -> list[tuple[str, bytes]]:
    meta = {"projection": projection, "reason": reason, "error": error[:2000], "attempts": str(attempts),
            "source_topic": record.topic, "source_partition": str(record.partition),
            "source_offset": str(record.offset), "dead_lettered_at": f"{time.time():.3f}"}
    return [*(record.headers or []), *((f"dlq.{k}", v.encode()) for k, v in meta.items())]


def dead_letter_topic(settings: Settings) -> kafka.TopicSpec:
    return kafka.TopicSpec(DLQ_TOPIC, 3, settings.topic_replication_factor)


class DeadLetters:
    """Produces dead letters with the original key so replays land on the original partition. The topic is
    created when missing (auto-creation is off), so a first dead letter never waits for a topic that is not there."""

    def __init__(self, settings: Settings, projection: str) -> None:
        kafka.ensure_topics(settings, [dead_letter_topic(settings)])
        self.projection = projection
        self.bootstrap = settings.kafka_bootstrap_servers
        self.producer = Producer({**kafka.base_config(settings), "enable.idempotence": True, "acks": "all",
                                  "linger.ms": 5, "partitioner": "murmur2_random"})

    def send(self, record: SourceRecord, *, reason: str, error: str, attempts: int = 1) -> None:
        self.producer.produce(DLQ_TOPIC, key=record.key, value=record.value,
                              headers=dead_letter_headers(record, projection=self.projection, reason=reason,
                                                          error=error, attempts=attempts))
        self.producer.poll(0)
        EVENTS.labels(self.projection, "dead_lettered").inc()

    async def flush(self, timeout: float = 30.0) -> None:
        remaining = await asyncio.to_thread(self.producer.flush, timeout)
        if remaining:  # Kafka away: an outage the engine waits out; the producer keeps the letters queued
            raise ServiceUnavailable(kafka.SERVICE, self.bootstrap,
                                     f"{remaining} dead letters not acknowledged within {timeout:.0f}s")


def describe(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """The dlq.* headers of a dead letter as a plain dict."""
    return {k[4:]: v.decode(errors="replace") for k, v in (headers or []) if k.startswith("dlq.")}


def to_json(headers: list[tuple[str, bytes]] | None) -> str:
    return json.dumps(describe(headers), sort_keys=True)
