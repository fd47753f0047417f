"""The workers' Kafka transport: Faust's aiokafka driver, with a consumer that commits a projection's
source partitions at the offsets its projection processed.

Faust picks a transport by the scheme of its broker URLs and loads schemes from the `faust.transports`
entry point; setup.cfg registers this one as `guarded`, so a worker's app uses `guarded://host:port`.
Everything but the committed offset of a governed partition and how long a fetch may wait to fill is
Faust's own: its timers, rebalance and shutdown commits, changelog topics and producer.
"""
from __future__ import annotations

import asyncio
from typing import Any, Protocol

import aiokafka as kafka_client
import faust
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from faust.exceptions import ImproperlyConfigured
from faust.transport.drivers import aiokafka
from faust.types import TP
from faust.types.auth import CredentialsT

from connectors import kafka, secret

SCHEME = "guarded"


class OffsetSource(Protocol):
    """Who decides the committed offset of the partitions it governs (agents.commit_guard.CommitGuard)."""

    def governs(self, tp: TP) -> bool: ...

    def committable(self, tp: TP) -> int | None:
        """The next offset to process on `tp` if everything before it is processed, else None."""


class BatchedFetchThread(aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, with fetches that wait up to `fetch_wait_ms` for `fetch_min_bytes`.

    Faust fetches with aiokafka's default of one byte: every record the relay publishes wakes each worker
    for a fetch of its own, and at a few dozen orders a second that per-fetch work (aiokafka, Faust's
    thread hand-over, the broker's fetch) was a fifth of a worker's CPU. Letting a fetch wait briefly
    gathers what arrives meanwhile into one response. The settings default to Faust's own values (see
    README: Projections for why batching is not the default yet).
    Faust hard-codes the fetch wait where it builds the consumer, so that one method is restated here with
    Faust's own arguments (tests/unit/test_transport.py compares them with Faust's)."""

    async def getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        """Faust's take of fetched records, after letting them gather for the consumer's `fetch_gather_ms`.
        aiokafka does not fetch a partition again while records it fetched are waiting to be taken, so
        the pause also gathers what the relay publishes meanwhile into the next fetch: one fetch and one
        hand-over between the consumer's thread and the worker's loop per pause, instead of one per
        publish. Nothing is skipped or reordered; records wait at most the pause longer."""
        if self.consumer.fetch_gather_ms:
            await asyncio.sleep(self.consumer.fetch_gather_ms / 1000)
        return await super().getmany(active_partitions, timeout)

    def _create_worker_consumer(self, transport: Any) -> kafka_client.AIOKafkaConsumer:
        conf, consumer = self.app.conf, self.consumer
        # Table recovery needs Faust's assignor whenever the app has changelog tables (as in Faust).
        self._assignor = (self.app.assignor if conf.table_standby_replicas > 0 or self.app.tables.changelog_topics
                          else RoundRobinPartitionAssignor)
        if conf.broker_session_timeout > conf.broker_request_timeout:
            raise ImproperlyConfigured(
                "broker_session_timeout cannot be greater than broker_request_timeout")
        return kafka_client.AIOKafkaConsumer(
            client_id=conf.broker_client_id,
            group_id=conf.id,
            group_instance_id=conf.consumer_group_instance_id,
            bootstrap_servers=aiokafka.server_list(transport.url, transport.default_port),
            partition_assignment_strategy=[self._assignor],
            enable_auto_commit=False,
            auto_offset_reset=conf.consumer_auto_offset_reset,
            max_poll_records=conf.broker_max_poll_records,
            max_poll_interval_ms=int((conf.broker_max_poll_interval or 0) * 1000.0),
            max_partition_fetch_bytes=conf.consumer_max_fetch_size,
            fetch_max_wait_ms=consumer.fetch_wait_ms,
            fetch_min_bytes=consumer.fetch_min_bytes,
            request_timeout_ms=int(conf.broker_request_timeout * 1000.0),
            check_crcs=conf.broker_check_crcs,
            session_timeout_ms=int(conf.broker_session_timeout * 1000.0),
            rebalance_timeout_ms=int(conf.broker_rebalance_timeout * 1000.0),
            heartbeat_interval_ms=int(conf.broker_heartbeat_interval * 1000.0),
            isolation_level="read_committed" if consumer.in_transaction else "read_uncommitted",
            metadata_max_age_ms=conf.consumer_metadata_max_age_ms,
            connections_max_idle_ms=conf.consumer_connections_max_idle_ms,
            **aiokafka.credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
        )


class GuardedConsumer(aiokafka.Consumer):
    """Faust's consumer, except that a governed partition commits the offset its source gives, and that
    its fetches wait to fill (BatchedFetchThread; the worker sets how long before the consumer starts).

    Faust's own computation still runs first for every partition: it trims Faust's acknowledgement list,
    which would otherwise grow for as long as the worker runs. Faust computes the committable offset of
    each partition in `_new_offset`, a method it does not document; tests/unit/test_transport.py checks
    that a commit still goes through it, so a Faust release that changes this fails the unit tests."""

    offset_source: OffsetSource | None = None
    fetch_wait_ms: int = 1500     # Faust's own fetch wait and aiokafka's minimum, until the worker sets them
    fetch_min_bytes: int = 1
    fetch_gather_ms: int = 0      # no pause before taking records, as in Faust, until the worker sets it

    def _new_consumer_thread(self) -> BatchedFetchThread:
        return BatchedFetchThread(self, loop=self.loop, beacon=self.beacon)

    def _new_offset(self, tp: TP) -> int | None:
        faust_offset = super()._new_offset(tp)
        source = self.offset_source
        if source is None or not source.governs(tp):
            return faust_offset
        return source.committable(tp)


class Transport(aiokafka.Transport):
    Consumer = GuardedConsumer


def broker_credentials(settings: kafka.Settings) -> CredentialsT | None:
    """Faust's `broker_credentials` from the Kafka settings, so the workers' consumers and producers
    (this transport is Faust's aiokafka driver) use the same TLS and SASL as the confluent-kafka clients:
    SASL (over TLS for SASL_SSL), TLS alone for SSL, None (plaintext) otherwise."""
    protocol = settings.kafka_security_protocol
    if protocol.startswith("SASL_"):
        return faust.SASLCredentials(username=settings.kafka_sasl_username,
                                     password=secret(settings.kafka_sasl_password),
                                     mechanism=settings.kafka_sasl_mechanism or "PLAIN",
                                     ssl_context=kafka.ssl_context(settings))
    if protocol == "SSL":
        return faust.SSLCredentials(kafka.ssl_context(settings))
    return None


def broker_urls(bootstrap_servers: str) -> list[str]:
    """Faust broker URLs that select this transport."""
    return [f"{SCHEME}://{server.strip()}" for server in bootstrap_servers.split(",")]
