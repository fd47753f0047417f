"""Which failures are store outages, and the health a worker reports while it rides one out.

An outage is a store that cannot be reached or does not answer in time: the same request will succeed
once the store is back, so a worker waits for it (partitions paused, process, tables and assignment
kept) instead of exiting. Anything else escaping a batch — a bug, a request the store rejects, an
unrecoverable state — is not an outage: it is retried a few times, then the worker exits (crash-only).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

import elastic_transport
import elasticsearch
import psycopg
import pymongo.errors
import redis.exceptions
from confluent_kafka import KafkaError, KafkaException

from agents.metrics import STORE_UP
from connectors import ServiceUnavailable

log = logging.getLogger("cqrs.worker")

# (exception types, store) — the first match names the store a failure comes from.
OUTAGE_TYPES: tuple[tuple[tuple[type[BaseException], ...], str], ...] = (
    ((pymongo.errors.ConnectionFailure,), "mongodb"),
    ((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError), "redis"),
    ((elastic_transport.ConnectionError, elastic_transport.ConnectionTimeout), "elasticsearch"),
    ((psycopg.OperationalError,), "postgresql"),
)
UNAVAILABLE_STATUS = frozenset({429, 502, 503, 504})  # an Elasticsearch answer meaning "not now"
KAFKA_RETRIABLE = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT,
                             KafkaError._MSG_TIMED_OUT, KafkaError.NOT_COORDINATOR,
                             KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                             KafkaError.REQUEST_TIMED_OUT, KafkaError.LEADER_NOT_AVAILABLE,
                             KafkaError.NOT_LEADER_FOR_PARTITION})


def outage_store(exc: BaseException | None) -> str | None:
    """The store whose outage `exc` reports (following `raise ... from`), or None when it is not an outage."""
    seen = 0
    while exc is not None and seen < 8:
        for types, store in OUTAGE_TYPES:
            if isinstance(exc, types):
                return store
        if isinstance(exc, elasticsearch.ApiError) and exc.status_code in UNAVAILABLE_STATUS:
            return "elasticsearch"
        if isinstance(exc, ServiceUnavailable):
            return exc.service
        if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError) and (
                exc.args[0].retriable() or exc.args[0].code() in KAFKA_RETRIABLE):
            return "kafka"
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return "network"
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


class StoreHealth:
    """The stores a worker is waiting for, and since when; readiness is false while there is any."""

    def __init__(self, projection: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.projection = projection
        self.clock = clock
        self.down: dict[str, float] = {}   # store -> since (clock)
        self.waited_s = 0.0                 # outages that ended, in all
        self.started = False               # tables restored, consuming

    @property
    def ready(self) -> bool:
        return self.started and not self.down

    def failed(self, store: str, what: str, exc: BaseException) -> None:
        if store in self.down:
            return
        log.warning("%s: %s is unavailable (%s: %s); waiting for it", self.projection, store, type(exc).__name__, exc)
        self.down[store] = self.clock()
        STORE_UP.labels(self.projection, store).set(0)

    def recovered(self, stores: set[str]) -> None:
        back = [s for s in stores if s in self.down]
        if back and len(back) == len(self.down):
            self.waited_s += self.outage_s()
        for store in back:
            log.warning("%s: %s is back after %.1fs; resuming", self.projection, store,
                        self.clock() - self.down.pop(store))
            STORE_UP.labels(self.projection, store).set(1)

    def outage_s(self) -> float:
        """How long the oldest ongoing outage has lasted (0 when none)."""
        return self.clock() - min(self.down.values()) if self.down else 0.0

    def consuming_time(self) -> float:
        """A clock that stands still while the worker waits for a store: the sequence gate measures how long
        it holds an event in it, so a missing event the worker could not read during an outage is not
        given up on because of the outage."""
        return self.clock() - self.waited_s - self.outage_s()
