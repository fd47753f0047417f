"""Transactional-outbox relay: publishes committed events to Kafka, then marks them published.

Guarantees:
- An event is published iff its command committed (it is only ever read from committed outbox rows).
- At-least-once: rows are marked published only after the broker acknowledged them; a crash between
  ack and mark republishes them (consumers deduplicate by event_id).
- Per-aggregate order: rows are published in id order (one aggregate's rows are in commit order)
  through an idempotent producer keyed by aggregate id; only one relay is active at a time, elected
  with a PostgreSQL advisory lock, so several gateway processes never publish concurrently.
- Wakes on LISTEN/NOTIFY at commit; a short bounded poll covers missed notifications.
- The statement that marks rows published also raises each partition's published head
  (`stream_heads`), which the query API follows to say whether a view is current.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import psycopg
from confluent_kafka import KafkaError, Message, Producer
from prometheus_client import Counter, Gauge, Histogram

from app.settings import Settings
from connectors import kafka, keep_running, postgres

log = logging.getLogger("cqrs.relay")

RELAY_LOCK_KEY = 0x0C9A5_0B0C  # one advisory lock per write-model database
PUBLISH_LAG = Histogram("outbox_publish_lag_seconds", "Commit (outbox insert) to broker acknowledgment",
                        buckets=(0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
PUBLISHED = Counter("outbox_events_published_total", "Events acknowledged by the broker", ["topic"])
PUBLISH_ERRORS = Counter("outbox_publish_errors_total", "Events the broker did not acknowledge", ["topic"])
BACKLOG = Gauge("outbox_backlog", "Committed events not yet acknowledged by the broker")
LEADER = Gauge("outbox_relay_leader", "1 while this process holds the relay lock")


PRUNE_EVERY_S = 60.0
PRUNE_BATCH = 5_000
PRUNE_MAX_BATCHES = 20  # per call: at most 100,000 rows
PRUNE = """
delete from outbox where id in (
    select id from outbox where published_at < now() - make_interval(secs => %s) order by published_at limit %s)
"""
PRUNED = Counter("outbox_rows_pruned_total", "Published outbox rows deleted after OUTBOX_KEEP_HOURS")

# One statement, so a partition's published head is raised with the rows it covers: never behind them.
MARK_PUBLISHED = """
with heads as (
    insert into stream_heads (topic, partition, next_offset)
    select * from unnest(%s::text[], %s::int[], %s::bigint[])
    on conflict (topic, partition) do update
        set next_offset = greatest(stream_heads.next_offset, excluded.next_offset), updated_at = clock_timestamp()
    returning 1)
update outbox o set published_at = v.acked_at
from (select unnest(%s::bigint[]) as id, unnest(%s::timestamptz[]) as acked_at) v where o.id = v.id
"""


@dataclass
class _Row:
    id: int
    topic: str
    key: str
    payload: bytes
    headers: dict
    created_at: datetime
    acked_at: datetime | None = None
    error: KafkaError | None = None
    partition: int = -1
    offset: int = -1


def published_heads(rows: list[_Row]) -> dict[tuple[str, int], int]:
    """Per (topic, partition), the offset after the last of `rows` the broker acknowledged there."""
    heads: dict[tuple[str, int], int] = {}
    for r in rows:
        key = (r.topic, r.partition)
        heads[key] = max(heads.get(key, 0), r.offset + 1)
    return heads


def producer_config(settings: Settings) -> dict:
    return {
        **kafka.base_config(settings),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": settings.outbox_linger_ms,
        "compression.type": "lz4",
        "partitioner": "murmur2_random",  # the Java client's default: every producer agrees on key -> partition
        "delivery.timeout.ms": 30_000,
    }


class OutboxRelay:
    def __init__(self, settings: Settings, batch_size: int = 1000) -> None:
        self.settings = settings
        self.batch_size = batch_size
        self.producer = Producer(producer_config(settings))
        self._stopping = asyncio.Event()
        self.is_leader = False

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Contend for leadership forever; publish while leader. Errors back off (bounded) and retry."""
        async def lead() -> None:
            try:
                await self._lead()
            finally:
                self.is_leader = False
                LEADER.set(0)

        await keep_running("outbox relay", lead, (psycopg.Error, OSError), log, stopping=self._stopping.is_set,
                           sleep=self._sleep)
        await asyncio.to_thread(self.producer.flush, 10)

    async def _connect(self) -> psycopg.AsyncConnection:
        return await psycopg.AsyncConnection.connect(postgres.conninfo(self.settings), autocommit=True,
                                                     connect_timeout=postgres.connect_timeout(self.settings))

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _lead(self) -> None:
        async with await self._connect() as conn:
            while not self._stopping.is_set():
                got = (await (await conn.execute("select pg_try_advisory_lock(%s)", (RELAY_LOCK_KEY,))).fetchone())[0]
                if got:
                    break
                await self._sleep(1.0)
            else:
                return
            self.is_leader = True
            LEADER.set(1)
            await conn.execute("listen outbox")
            notifies = conn.notifies(timeout=self.settings.outbox_poll_interval_s)
            last_backlog = 0.0
            pruning = asyncio.create_task(self._pruning(), name="outbox-pruning")
            try:
                while not self._stopping.is_set():
                    while await self.publish_batch(conn) == self.batch_size:
                        pass
                    if time.monotonic() - last_backlog > 5:
                        BACKLOG.set((await (await conn.execute(
                            "select count(*) from outbox where published_at is null")).fetchone())[0])
                        last_backlog = time.monotonic()
                    async for _ in notifies:
                        break
                    notifies = conn.notifies(timeout=self.settings.outbox_poll_interval_s)
            finally:
                pruning.cancel()

    async def _pruning(self) -> None:
        """While leading, every PRUNE_EVERY_S: prune until nothing is due, on a connection of its own, so
        pruning never holds publishing back (the rows it deletes are never the ones being published)."""
        while not self._stopping.is_set():
            await self._sleep(PRUNE_EVERY_S)
            try:
                async with await self._connect() as conn:
                    while await self.prune(conn) == PRUNE_BATCH * PRUNE_MAX_BATCHES:
                        await self._sleep(1.0)
            except (psycopg.Error, OSError) as exc:
                log.warning("outbox pruning: %s; trying again in %.0fs", str(exc).splitlines()[0], PRUNE_EVERY_S)

    async def prune(self, conn: psycopg.AsyncConnection) -> int:
        """Delete published rows older than OUTBOX_KEEP_HOURS, in bounded batches; returns how many. Kafka's
        event topics keep every event, so the outbox only has to outlive publishing (plus a window in which
        recent events can still be found, and republished, from the write model)."""
        keep_s = self.settings.outbox_keep_hours * 3600
        pruned = 0
        for _ in range(PRUNE_MAX_BATCHES):
            deleted = (await conn.execute(PRUNE, (keep_s, PRUNE_BATCH))).rowcount
            pruned += deleted
            if deleted < PRUNE_BATCH or self._stopping.is_set():
                break
        PRUNED.inc(pruned)
        return pruned

    async def publish_batch(self, conn: psycopg.AsyncConnection) -> int:
        """Publish up to batch_size unpublished rows in id order; returns how many were read."""
        cur = await conn.execute(
            "select id, topic, aggregate_id, payload, headers, created_at from outbox "
            "where published_at is null order by id limit %s", (self.batch_size,))
        rows = [_Row(*r) for r in await cur.fetchall()]
        if not rows:
            return 0
        for row in rows:
            self._produce(row)
        remaining = await asyncio.to_thread(self.producer.flush, 30)
        acked = self._acked_in_order(rows)
        if acked:
            heads = published_heads(acked)
            await conn.execute(MARK_PUBLISHED, ([t for t, _ in heads], [p for _, p in heads], list(heads.values()),
                                                [r.id for r in acked], [r.acked_at for r in acked]))
            for r in acked:
                PUBLISH_LAG.observe(max(0.0, (r.acked_at - r.created_at).total_seconds()))
                PUBLISHED.labels(r.topic).inc()
        if len(acked) < len(rows):
            failed = next(r for r in rows if r.acked_at is None)
            # A fresh producer for the retry: after a broker restart an idempotent producer has been seen
            # timing out the same message for good. Rows are republished from the first unacknowledged one;
            # a duplicate is harmless (projections skip what they applied).
            stale, self.producer = self.producer, Producer(producer_config(self.settings))
            await asyncio.to_thread(stale.purge)
            raise OSError(f"broker did not acknowledge outbox row {failed.id}: "
                          f"{failed.error or f'{remaining} still in flight'}")
        return len(rows)

    def _produce(self, row: _Row) -> None:
        def on_delivery(err: KafkaError | None, msg: Message, row: _Row = row) -> None:
            if err is None:
                row.acked_at = datetime.now(timezone.utc)
                row.partition, row.offset = msg.partition(), msg.offset()
            else:
                row.error = err
                PUBLISH_ERRORS.labels(row.topic).inc()

        headers = [(k, str(v).encode()) for k, v in row.headers.items()]
        while True:
            try:
                self.producer.produce(row.topic, key=row.key.encode(), value=bytes(row.payload), headers=headers,
                                      on_delivery=on_delivery)
                return
            except BufferError:
                self.producer.poll(0.05)

    @staticmethod
    def _acked_in_order(rows: list[_Row]) -> list[_Row]:
        """Rows safe to mark: acknowledged, and not after an unacknowledged row of the same aggregate."""
        blocked: set[tuple[str, str]] = set()
        acked = []
        for r in rows:
            if r.acked_at is None or (r.topic, r.key) in blocked:
                blocked.add((r.topic, r.key))
            else:
                acked.append(r)
        return acked
