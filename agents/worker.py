"""Faust worker of one projection: its own app id (= consumer group), its own progress tables.

`cqrs worker <projection>` runs it; start more processes with the same projection to split the
partitions between them (never more than the partition count). Events of one aggregate share a
partition, so one worker applies them, in order. Before each batch and tick, a worker looks up the
version of its read model that serves (waiting while a rebuild's switch fence holds it) and writes there.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import faust
import psycopg_pool
from faust.types import TP
from pymongo.asynchronous.database import AsyncDatabase

from agents import commit_guard, dead_letters, transport
from agents.commit_guard import CommitGuard, exit_unprocessed
from agents.dead_letters import DeadLetters, SourceRecord
from agents.engine import BatchProcessor, Projection
from agents.gate import SequenceGate
from agents.metrics import OFFSET_LAG, READY
from agents.outages import StoreHealth, outage_store
from agents.order_views import OrderViews, ensure_order_indexes
from agents.product_search import ProductSearch, ensure_products_index
from agents.sales_stats import SalesStats
from agents.projections import PROJECTIONS, consumer_group, source_topics
from agents.progress_report import ProgressReport
from agents.recovery_watch import RestoreWatch
from agents.read_model_versions import ServingRecord, current, wait_unfenced
from domain.read_models import READ_MODEL_VERSIONS
from connectors import elasticsearch, mongo, postgres
from connectors import redis as redis_connector
from schemas.codec import EventCodec
from tables.progress import TableProgress

log = logging.getLogger("cqrs.worker")
PrepareCodecs = Callable[[], dict[str, EventCodec]]


class Settings(commit_guard.Settings, dead_letters.Settings, mongo.Settings, elasticsearch.Settings,
               redis_connector.Settings, postgres.Settings, Protocol):
    """What a worker reads of the application's settings; the entry point passes its settings object in."""

    es_products_alias: str
    gap_hold_seconds: float
    projection_batch_size: int
    projection_batch_wait_s: float
    projection_group_suffix: str
    projection_tick_s: float
    sales_copy_interval_s: float
    worker_fetch_gather_ms: int
    worker_fetch_min_bytes: int
    worker_fetch_wait_ms: int
    topic_partitions: int
    topic_prefix: str
    worker_data_dir: str
    worker_session_timeout_s: float
    worker_restore_stall_s: float


class BuiltProjection(NamedTuple):
    """A projection with what its worker also needs: the closers to call on shutdown, the read database
    (where the serving version of a rebuildable read model is recorded) and the Redis client (progress
    reports use it too)."""

    projection: Projection
    closers: list
    db: AsyncDatabase
    redis: Any


async def build_projection(name: str, settings: Settings) -> BuiltProjection:
    """The projection with its async clients."""
    timeout_ms = int(settings.connect_timeout_s * 1000)
    # pymongo bounds every read itself (socketTimeoutMS) well within the engine's attempt bound, so an
    # attempt is never cancelled inside the async driver (which can leave its topology lock broken).
    client = mongo.async_mongo_client(settings, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms,
                                      socketTimeoutMS=30_000)
    db = client[settings.mongo_database]
    redis = redis_connector.async_redis_client(settings)
    closers = [client.close, redis.aclose]
    if name == "order-views":
        pool = psycopg_pool.AsyncConnectionPool(postgres.conninfo(settings), min_size=1, max_size=4, open=False,
                                                kwargs={"connect_timeout": postgres.connect_timeout(settings)})
        await pool.open(wait=True, timeout=settings.connect_timeout_s * 3)
        closers.append(pool.close)
        serving = await current(db[READ_MODEL_VERSIONS], name)
        await ensure_order_indexes(db, serving.order_collections)
        return BuiltProjection(OrderViews(db, pool, redis), closers, db, redis)
    # The worker's retry policy decides how long to wait for the search cluster; the client's own node
    # back-off (up to 30 s by default) would hold writes back long after the cluster is back.
    es = elasticsearch.async_es_client(settings, request_timeout=30, max_retries=1, max_dead_node_backoff=1.0)
    closers.append(es.close)
    alias = settings.es_products_alias
    await ensure_products_index(es, alias)
    if name == "product-search":
        return BuiltProjection(ProductSearch(es, alias), closers, db, redis)
    if name == "sales-stats":
        return BuiltProjection(SalesStats(redis, db, es, alias,
                                                     copy_interval_s=settings.sales_copy_interval_s), closers, db, redis)
    raise ValueError(f"unknown projection {name!r}; known: {', '.join(PROJECTIONS)}")


class ServingFollower:
    """Points the projection at the version of its read model that serves now, waiting while a rebuild's
    switch fence holds its live writes.

    The pointer lives in MongoDB. While MongoDB cannot be asked, the projection keeps the version it last
    read, as long as that showed no rebuild in progress: a switch fence is only ever set during a rebuild,
    and written to MongoDB, so it cannot appear unseen while the store is away. A projection that does not
    write MongoDB (product-search; sales-stats counting in Redis) therefore keeps going through a MongoDB
    outage. With a rebuild in progress, the worker waits for the pointer instead (an outage, retried)."""

    RETRY_POINTER_S = 5.0

    def __init__(self, projection: Projection, versions, clock=time.monotonic) -> None:
        self.projection = projection
        self.versions = versions
        self.clock = clock
        self.last: ServingRecord | None = None
        self._unreadable_since: float | None = None

    async def follow(self) -> None:
        await self.projection.target_serving(await self._record())

    async def _record(self) -> ServingRecord:
        usable = self.last is not None and self.last.building is None
        if usable and self._unreadable_since is not None and \
                self.clock() - self._unreadable_since < self.RETRY_POINTER_S:
            return self.last
        try:
            self.last = await wait_unfenced(self.versions, self.projection.name)
        except Exception as exc:
            if not usable or outage_store(exc) is None:
                raise
            if self._unreadable_since is None:
                log.warning("%s: serving version unreadable (%s); keeping version %d while no rebuild runs",
                            self.projection.name, exc, self.last.serving)
            self._unreadable_since = self.clock()
            return self.last
        self._unreadable_since = None
        return self.last


def source_record(event: faust.EventT) -> SourceRecord:
    message = event.message
    headers = event.headers
    return SourceRecord(message.topic, message.partition, message.offset, event.key, event.value,
                        list(headers.items()) if isinstance(headers, dict) else list(headers or []),
                        message.timestamp)


def report_offset_lag(app: faust.App, name: str, records: list[SourceRecord], reported: set[TP]) -> None:
    """Offset lag of the partitions in the batch; partitions this worker no longer owns stop being
    reported (their new owner reports them), so a sum over workers never counts one twice."""
    last: dict[tuple[str, int], int] = {}
    for r in records:
        last[(r.topic, r.partition)] = r.offset
    assigned = app.consumer.assignment()
    for tp in [tp for tp in reported if tp not in assigned]:
        OFFSET_LAG.remove(name, tp.topic, str(tp.partition))
        reported.discard(tp)
    for (topic, partition), offset in last.items():
        tp = TP(topic, partition)
        highwater = app.consumer.highwater(tp) if tp in assigned else None  # revoked while processing
        if highwater is not None:
            OFFSET_LAG.labels(name, topic, str(partition)).set(max(0, highwater - offset - 1))
            reported.add(tp)


def faust_app(name: str, settings: Settings) -> faust.App:
    """The projection's Faust app: its consumer group, in-memory tables restored from changelogs, no
    standby replicas, and session and rebalance timeouts from the settings."""
    Path(settings.worker_data_dir).mkdir(parents=True, exist_ok=True)
    return faust.App(
        consumer_group(name, settings.projection_group_suffix),
        broker=transport.broker_urls(settings.kafka_bootstrap_servers),
        broker_credentials=transport.broker_credentials(settings),
        store="memory://",
        datadir=f"{settings.worker_data_dir}/{{conf.id}}",
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        consumer_auto_offset_reset=settings.projection_start,
        stream_buffer_maxsize=max(4096, settings.projection_batch_size * 2),
        broker_commit_interval=1.0,
        producer_linger=settings.worker_producer_linger_ms / 1000,
        table_standby_replicas=0,
        broker_session_timeout=settings.worker_session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.worker_session_timeout_s / 4),
        broker_rebalance_timeout=settings.worker_session_timeout_s * 2,
    )


async def close_all(closers: list) -> None:
    """Best effort: a closer that fails is logged at debug level and the others still run."""
    for closer in closers:
        try:
            result = closer()
            if hasattr(result, "__await__"):
                await result
        except Exception as exc:  # closing is best effort
            log.debug("closing %s: %s", closer, exc)


class ProjectionRun:
    """What one worker process runs for its projection: the agent's batch loop, readiness, the periodic
    upkeep and liveness checks, and closing the clients on shutdown."""

    def __init__(self, app: faust.App, name: str, settings: Settings, prepare_codecs: PrepareCodecs,
                 health: StoreHealth, sources: list[str]) -> None:
        self.app, self.name, self.settings = app, name, settings
        self.prepare_codecs, self.health = prepare_codecs, health
        self.progress = TableProgress(app, name, settings.topic_partitions)
        self.guard = CommitGuard(app, settings, name, sources, health)
        self.restore = RestoreWatch(lambda: app.tables.recovery, self.guard.kafka_answers,
                                    lambda why: exit_unprocessed(name, RuntimeError(why)),
                                    settings.worker_restore_stall_s)
        self.processor: BatchProcessor | None = None
        self.follower: ServingFollower | None = None
        self.report: ProgressReport | None = None
        self.idle_ends: dict[tuple[str, int], int] = {}
        self.closers: list = []
        self.lag_reported: set[TP] = set()

    async def start(self) -> None:
        projection, self.closers, db, redis = await build_projection(self.name, self.settings)
        self.processor = BatchProcessor(projection, self.prepare_codecs(), self.progress,
                                        DeadLetters(self.settings, self.name),
                                        SequenceGate(self.settings.gap_hold_seconds,
                                                     clock=self.health.consuming_time),
                                        health=self.health)
        self.follower = ServingFollower(projection, db[READ_MODEL_VERSIONS])
        processor = self.processor
        self.guard.held_floor = lambda: processor.held_floor
        self.guard.attach()
        self.report = ProgressReport(redis, self.app.conf.id, lambda tp: self.guard.committable(TP(*tp)), self.head)

    async def project(self, stream) -> None:
        """The agent: admit each batch through the guard, follow the serving version, process, and only
        then let the guard commit it. Any failure ends the process with the batch unprocessed."""
        try:
            await self.start()
            assert self.processor is not None and self.follower is not None and self.report is not None
            async for events in stream.take_events(self.settings.projection_batch_size,
                                                   within=self.settings.projection_batch_wait_s):
                records = await self.guard.admit([source_record(e) for e in events])
                if records:
                    await self.processor.retry.run(f"{self.name}: serving version", self.follower.follow,
                                                   health=self.health)
                    await self.processor.process(records)
                    self.guard.done(records)
                    report_offset_lag(self.app, self.name, records, self.lag_reported)
                    await self.report.after_batch(records)
        except Exception as exc:  # noqa: BLE001 - every failure takes the same way out
            exit_unprocessed(self.name, exc)

    def ready(self) -> None:
        READY.labels(self.name).set(1)
        self.health.started = True

    def head(self, tp: tuple[str, int]) -> int | None:
        """Where the partition's log ends, as the consumer last saw it (or, idle so far, as Kafka said)."""
        highwater = self.app.consumer.highwater(TP(*tp))
        return highwater if highwater is not None else self.idle_ends.get(tp)

    async def tick(self) -> None:
        """Periodic upkeep of a projection (e.g. re-copying figures a sink did not take yet) and the
        consumer's liveness checks."""
        await self.restore.check()
        if self.processor is None or self.follower is None or self.report is None:
            return
        owned = {(tp.topic, tp.partition) for tp in self.app.consumer.assignment()
                 if tp.topic in self.guard.source_topics}
        self.report.forget(owned)
        try:
            self.idle_ends = await self.guard.idle_ends(owned)
            await self.report.publish(owned)
            await self.guard.watch()
        except Exception as exc:  # e.g. the broker briefly unreachable; checked again next tick
            log.warning("%s progress report or liveness check failed: %s", self.name, exc)
        try:
            await self.follower.follow()
            await self.processor.projection.tick()
        except Exception as exc:  # upkeep retries on the next tick
            (log.info if outage_store(exc) else log.warning)("%s upkeep failed: %s", self.name, exc)


def create_worker_app(name: str, settings: Settings, prepare_codecs: PrepareCodecs,
                      health: StoreHealth | None = None) -> faust.App:
    """The Faust app of one projection. `prepare_codecs` makes sure the event topics and schemas exist and
    returns their codecs; `health` (served on the worker's /readyz) learns when the worker has restored its
    tables and which stores it is waiting for."""
    if name not in PROJECTIONS:
        raise ValueError(f"unknown projection {name!r}; known: {', '.join(PROJECTIONS)}")
    app = faust_app(name, settings)
    app.consumer.fetch_wait_ms, app.consumer.fetch_min_bytes = settings.worker_fetch_wait_ms, \
        settings.worker_fetch_min_bytes
    app.consumer.fetch_gather_ms = settings.worker_fetch_gather_ms
    sources = source_topics(name, settings.topic_prefix)
    topic = app.topic(*sources, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    # While the worker waits for a store its agent takes nothing from the stream, so Faust's flow control
    # stops fetching each source partition once its buffer (stream_buffer_maxsize) is full, and resumes as
    # it drains. Faust's pause_partitions is not used: faust-streaming drops records already fetched for a
    # paused partition (the fault suite saw the worker re-reading them in a loop after the pause).
    run = ProjectionRun(app, name, settings, prepare_codecs, health or StoreHealth(name), sources)

    @app.agent(topic, name=name, concurrency=1)
    async def project(stream):
        await run.project(stream)

    @app.task
    async def ready() -> None:
        """Faust runs app tasks once its tables are restored from their changelogs."""
        run.ready()

    @app.timer(interval=settings.projection_tick_s)
    async def tick() -> None:
        await run.tick()

    @app.on_before_shutdown.connect
    async def close(app_, **kwargs) -> None:  # noqa: ARG001 - signal signature
        await close_all(run.closers)

    return app
