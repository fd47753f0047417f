"""Kafka clients (confluent-kafka) and topic administration."""
from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from connectors import ServiceInfo, ServiceUnavailable, secret


class Settings(Protocol):
    """The settings this connector reads: the application passes its settings object in (never imported here)."""

    kafka_bootstrap_servers: str
    connect_timeout_s: float
    kafka_security_protocol: str
    kafka_sasl_mechanism: str | None
    kafka_sasl_username: str | None
    kafka_sasl_password: Any  # SecretStr | None
    kafka_ssl_cafile: str | None
    kafka_ssl_certfile: str | None
    kafka_ssl_keyfile: str | None
    kafka_ssl_key_password: Any  # SecretStr | None


SERVICE = "kafka"
_quiet = logging.getLogger("librdkafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False
SLOW_ATTEMPTS = 3
SLOW_WINDOW = 3.0  # × connect_timeout_s: no new try starts later than this after the first
SLOW_PAUSE_S = 0.25  # before the second try; twice that before the third
_TIMEOUTS = frozenset({KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT})
T = TypeVar("T")


def base_config(settings: Settings) -> dict[str, Any]:
    """Client settings every Kafka client shares (producers, consumers and admin clients all start from it,
    so TLS and SASL reach each of them); librdkafka's own logging goes to a quiet logger."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "socket.connection.setup.timeout.ms": int(settings.connect_timeout_s * 1000),
        "logger": _quiet,
        **security_config(settings),
    }


def security_config(settings: Settings) -> dict[str, str]:
    """librdkafka's security options from the settings: nothing but the protocol for PLAINTEXT."""
    config = {"security.protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol.startswith("SASL_"):
        config |= {"sasl.mechanism": settings.kafka_sasl_mechanism or "PLAIN",
                   "sasl.username": settings.kafka_sasl_username or "",
                   "sasl.password": secret(settings.kafka_sasl_password) or ""}
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        optional = {"ssl.ca.location": settings.kafka_ssl_cafile,
                    "ssl.certificate.location": settings.kafka_ssl_certfile,
                    "ssl.key.location": settings.kafka_ssl_keyfile,
                    "ssl.key.password": secret(settings.kafka_ssl_key_password)}
        config |= {key: value for key, value in optional.items() if value}
    return config


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of Kafka clients that take one (Faust's aiokafka driver), None without TLS: the
    brokers' CA (else the system's) and the client certificate for mutual TLS."""
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile,
                                secret(settings.kafka_ssl_key_password))
    return context


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(base_config(settings))


def unavailable(settings: Settings, exc: BaseException) -> ServiceUnavailable:
    """The one-line ServiceUnavailable for a Kafka error or a request that timed out."""
    reason = exc.args[0].str() if isinstance(exc, KafkaException) and exc.args else f"{type(exc).__name__}: {exc}"
    return ServiceUnavailable(SERVICE, settings.kafka_bootstrap_servers, reason or "timed out")


# ---- unreachable or slow --------------------------------------------------------------------------
# No broker answering metadata means unreachable: `unavailable`. Once the cluster has answered
# metadata, a request that times out means a busy cluster, worth another try: `KafkaSlow`.

class KafkaSlow(ServiceUnavailable):
    """The cluster answered metadata, but a later request timed out or failed retriably: up but busy,
    worth another try. A ServiceUnavailable, so callers that only need "no answer" (the live
    dashboard's 503) treat it like one."""

    def __init__(self, address: str, reason: str, attempts: int = 1, elapsed_s: float | None = None) -> None:
        super().__init__(SERVICE, address, reason)
        self.attempts = attempts
        self.elapsed_s = elapsed_s

    def __str__(self) -> str:
        took = "" if self.elapsed_s is None else f" in {self.elapsed_s:.1f}s"
        tries = f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        return f"kafka slow: {self.reason} after {tries}{took} ({self.address} answered metadata)"

    def after(self, attempts: int, elapsed_s: float) -> KafkaSlow:
        return KafkaSlow(self.address, self.reason, attempts, elapsed_s)


def after_metadata(settings: Settings, request: str, exc: BaseException) -> ServiceUnavailable:
    """What a failed `request`, made once the cluster had answered metadata, means: a timeout or an
    error Kafka marks retriable (coordinator loading or moving, leader election) is KafkaSlow; anything
    else, Kafka unreachable."""
    if isinstance(exc, TimeoutError):  # a future's result(timeout) (concurrent.futures.TimeoutError)
        return KafkaSlow(settings.kafka_bootstrap_servers, f"{request} timed out")
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    if isinstance(error, KafkaError) and (error.code() in _TIMEOUTS or error.retriable()):
        reason = f"{request} timed out" if error.code() in _TIMEOUTS else f"{request}: {error.str()}"
        return KafkaSlow(settings.kafka_bootstrap_servers, reason)
    return unavailable(settings, exc)


def retry_slow(attempt: Callable[[], T], connect_timeout_s: float, *, attempts: int = SLOW_ATTEMPTS,
               clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> T:
    """`attempt()`, tried again while Kafka is only slow: at most `attempts` tries, none started later
    than SLOW_WINDOW × `connect_timeout_s` after the first. Anything else (unreachable, missing topics)
    is raised at once; the final KafkaSlow says how many tries it took."""
    start = clock()
    tries = 0
    while True:
        tries += 1
        try:
            return attempt()
        except KafkaSlow as exc:
            elapsed, pause = clock() - start, SLOW_PAUSE_S * tries
            if tries >= attempts or elapsed + pause > SLOW_WINDOW * connect_timeout_s:
                raise exc.after(tries, elapsed) from None
            sleep(pause)


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


def set_topic_config(settings: Settings, names: Iterable[str], config: dict[str, str], timeout: float = 30.0) -> None:
    """Set `config` on existing topics (an incremental change: other settings are kept)."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    resources = [ConfigResource(ResourceType.TOPIC, name, incremental_configs=[
        ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET) for key, value in config.items()])
        for name in names]
    if not resources:
        return
    admin = admin_client(settings)  # kept alive until every answer is in
    for fut in admin.incremental_alter_configs(resources, request_timeout=timeout).values():
        fut.result(timeout=timeout)


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
