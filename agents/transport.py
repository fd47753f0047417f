"""The workers' Kafka transport: Faust's aiokafka driver, with a consumer that commits a projection's
source partitions at the offsets its projection processed.

Faust picks a transport by the scheme of its broker URLs and loads schemes from the `faust.transports`
entry point; setup.cfg registers this one as `guarded`, so a worker's app uses `guarded://host:port`.
Everything but the committed offset of a governed partition is Faust's own: its timers, rebalance and
shutdown commits, changelog topics and producer.
"""
from __future__ import annotations

from typing import Protocol

import faust
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


class GuardedConsumer(aiokafka.Consumer):
    """Faust's consumer, except that a governed partition commits the offset its source gives.

    Faust's own computation still runs first for every partition: it trims Faust's acknowledgement list,
    which would otherwise grow for as long as the worker runs. Faust computes the committable offset of
    each partition in `_new_offset`, a method it does not document; tests/unit/test_transport.py checks
    that a commit still goes through it, so a Faust release that changes this fails the unit tests."""

    offset_source: OffsetSource | None = None

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
