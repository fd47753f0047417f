"""Kafka clients (confluent-kafka) and topic administration."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from app.settings import Settings
from connectors import ServiceInfo, ServiceUnavailable

SERVICE = "kafka"
_quiet = logging.getLogger("librdkafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def base_config(settings: Settings) -> dict[str, Any]:
    """Client settings every Kafka client shares; librdkafka's own logging goes to a quiet logger."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "socket.connection.setup.timeout.ms": int(settings.connect_timeout_s * 1000),
        "logger": _quiet,
    }


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(base_config(settings))


def unavailable(settings: Settings, exc: BaseException) -> ServiceUnavailable:
    """The one-line ServiceUnavailable for a Kafka error or a request that timed out."""
    reason = exc.args[0].str() if isinstance(exc, KafkaException) and exc.args else f"{type(exc).__name__}: {exc}"
    return ServiceUnavailable(SERVICE, settings.kafka_bootstrap_servers, reason or "timed out")


def check(settings: Settings) -> ServiceInfo:
    """Ask the cluster for its metadata within the connect timeout, or raise ServiceUnavailable."""
    try:
        meta = admin_client(settings).list_topics(timeout=settings.connect_timeout_s)
    except KafkaException as exc:
        raise unavailable(settings, exc) from None
    if not meta.brokers:
        raise ServiceUnavailable(SERVICE, settings.kafka_bootstrap_servers, "no brokers in metadata")
    return ServiceInfo(SERVICE, settings.kafka_bootstrap_servers, f"{len(meta.brokers)} broker(s)")


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int = 1
    config: tuple[tuple[str, str], ...] = ()


def ensure_topics(settings: Settings, specs: Iterable[TopicSpec], timeout: float = 30.0) -> list[str]:
    """Create missing topics with explicit partition counts; returns the names created. Existing ones are kept."""
    admin = admin_client(settings)
    existing = set(admin.list_topics(timeout=settings.connect_timeout_s).topics)
    wanted = [s for s in specs if s.name not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor,
                  config=dict(s.config)) for s in wanted],
        operation_timeout=timeout, request_timeout=timeout,
    )
    created = []
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
    return created


def delete_topics(settings: Settings, names: Iterable[str], timeout: float = 30.0) -> None:
    names = list(names)
    if not names:
        return
    admin = admin_client(settings)
    for fut in admin.delete_topics(names, operation_timeout=timeout).values():
        try:
            fut.result(timeout=timeout)
        except KafkaException as exc:
            if exc.args[0].name() != "UNKNOWN_TOPIC_OR_PART":
                raise


def delete_consumer_groups(settings: Settings, groups: Iterable[str], timeout: float = 30.0) -> None:
    """Delete consumer groups (and their committed offsets); a group that does not exist is no error."""
    from confluent_kafka.error import KafkaException

    admin = admin_client(settings)
    for group, future in admin.delete_consumer_groups(list(groups), request_timeout=timeout).items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].name() != "GROUP_ID_NOT_FOUND":
                raise


def committed_offsets(settings: Settings, group_id: str, partitions: Iterable[tuple[str, int]],
                      timeout: float = 10.0, admin: AdminClient | None = None) -> dict[tuple[str, int], int | None]:
    """The group's committed offset of each (topic, partition); None where it has committed none.
    `admin`: a client the caller keeps for repeated calls (else one is made for this call)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    tps = [TopicPartition(t, p) for t, p in partitions]
    if not tps:
        return {}
    admin = admin or admin_client(settings)  # kept referenced until its futures complete
    request = ConsumerGroupTopicPartitions(group_id, tps)
    found = admin.list_consumer_group_offsets([request], request_timeout=timeout)[group_id].result(timeout)
    return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None for tp in found.topic_partitions}


def earliest_offsets(settings: Settings, partitions: Iterable[tuple[str, int]],
                     timeout: float = 10.0, admin: AdminClient | None = None) -> dict[tuple[str, int], int]:
    """The first offset each (topic, partition) still holds (later than 0 once retention deleted some)."""
    return _list_offsets(settings, partitions, "earliest", timeout, admin)


def end_offsets(settings: Settings, partitions: Iterable[tuple[str, int]],
                timeout: float = 10.0, admin: AdminClient | None = None) -> dict[tuple[str, int], int]:
    """The offset the next record of each (topic, partition) will get."""
    return _list_offsets(settings, partitions, "latest", timeout, admin)


def _list_offsets(settings: Settings, partitions: Iterable[tuple[str, int]], which: str,
                  timeout: float, admin: AdminClient | None) -> dict[tuple[str, int], int]:
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec

    wanted = {TopicPartition(t, p): getattr(OffsetSpec, which)() for t, p in partitions}
    if not wanted:
        return {}
    admin = admin or admin_client(settings)
    futures = admin.list_offsets(wanted, request_timeout=timeout)
    return {(tp.topic, tp.partition): fut.result(timeout).offset for tp, fut in futures.items()}
