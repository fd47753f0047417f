"""`cqrs rebuild <projection>`: build a new version of a read model by replaying its topics from the
beginning, switch reads to it atomically, and drop the old version after a grace period, while the
live version keeps serving queries and the live workers keep projecting.

1. Lock: one rebuild per projection at a time (a write-model advisory lock, released if the process dies).
2. Version: version N+1 (new collections / a new index) and a consumer group of its own
   (`cqrs-<projection>-rebuild-v<N+1>`) are recorded as `building`; a rebuild that finds such a record
   resumes it from the group's committed offsets.
3. Catch-up: a bulk consumer replays the topics up to the end offsets seen at the start through the
   same BatchProcessor and pure projector as the live worker, with states kept in memory
   (agents.replay_buffer) and written in large bulk writes. Offsets are committed only after a flush.
4. Follow: it keeps reading until it is a few events from the live head.
5. Switch: it fences the live workers (they hold their next batch), drains to the end offsets seen
   after the fence, and switches in one atomic step (pointer update / alias swap). If the drain took
   longer than the fence allows, the fence is lifted and the switch tried again.
6. Grace: the old version stays for `--grace-s` (in-flight reads, reader caches), then is dropped,
   unless `--keep-old`.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

from agents.dead_letters import DeadLetters, SourceRecord
from agents.engine import BatchProcessor, MemoryProgress
from agents.worker import close_all
from agents.gate import SequenceGate
from agents.replay_buffer import ReplayBuffer
from agents.projections import consumer_group, source_topics
from agents.read_model_versions import FENCE_S, current
from domain.read_models import READ_MODEL_VERSIONS
from app.operations.rebuild_progress import RebuildProgress, duration
from app.operations.rebuild_targets import (REBUILDABLE, OrderViewsTarget, ProductSearchTarget, RebuildTarget,
                                 SalesStatsTarget)
from app.operations.rebuild_preflight import (EXIT_INCOMPLETE, IncompleteHistory, check_services,
                                             require_whole_history)
from app.settings import Settings
from app.operations.setup import prepare_event_codecs
from connectors import kafka, postgres, redis

LOCK_NAMESPACE = 0x0C9A6
SWITCH_MARGIN_S = 2.0
MAX_FOLLOW_ROUNDS = 50


class RebuildRefused(RuntimeError):
    """The rebuild cannot start or go on; the message is one line saying why."""


def lock_key(projection: str) -> int:
    """The advisory-lock key of one projection's rebuild (a 64-bit key in the project's own namespace)."""
    return (LOCK_NAMESPACE << 32) | zlib.crc32(f"rebuild:{projection}".encode())


def rebuild_group(projection: str, version: int, suffix: str = "") -> str:
    """The consumer group of one rebuild; the dashboard lists groups named `cqrs-<projection>-rebuild*`."""
    return consumer_group(projection, f"-rebuild-v{version}{suffix}")


@dataclass(frozen=True)
class RebuildOptions:
    keep_old: bool = False
    grace_s: float = 30.0
    batch: int = 20_000
    max_rate: float = 0.0           # events/s, 0 = as fast as the sinks take them
    checkpoint_s: float = 10.0
    cold_after: int = 300_000       # events without a change after which a state is written at a checkpoint
    max_states: int = 250_000
    head_distance: int = 2_000      # following stops when fewer events than this are left to the head
    switch_attempts: int = 3
    allow_partial: bool = False     # switch to a version built from topics that lost their first events


class BulkReplay:
    """Reads the source partitions from the rebuild group's committed offsets (the earliest still held
    when it has none) and feeds the BatchProcessor. Commits after each flush, never past an event whose
    state is not written yet or that a sequence gap holds."""

    def __init__(self, settings: Settings, group: str, topics: tuple[str, ...], processor: BatchProcessor,
                 buffer: ReplayBuffer, options: RebuildOptions) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.processor, self.buffer, self.options = processor, buffer, options
        self.consumer = Consumer({**kafka.base_config(settings), "group.id": group, "enable.auto.commit": False,
                                  "auto.offset.reset": "earliest", "enable.partition.eof": False,
                                  "fetch.min.bytes": 1_000_000, "fetch.wait.max.ms": 100})
        metadata = self.consumer.list_topics(timeout=settings.connect_timeout_s * 3)
        partitions: list[tuple[str, int]] = []
        for topic in topics:
            found = metadata.topics.get(topic)
            if found is None or found.error is not None:
                raise RebuildRefused(f"topic {topic} does not exist; nothing to rebuild from (run `cqrs setup`)")
            partitions += [(topic, p) for p in sorted(found.partitions)]
        self.admin = kafka.admin_client(settings)
        committed = kafka.committed_offsets(settings, group, partitions, admin=self.admin)
        earliest = kafka.earliest_offsets(settings, partitions, admin=self.admin)
        self.settings = settings
        self.position = {tp: committed[tp] if committed.get(tp) is not None else earliest[tp] for tp in partitions}
        self.consumer.assign([TopicPartition(t, p, off) for (t, p), off in self.position.items()])
        self.events = 0
        self.unstored: dict[str, tuple[tuple[str, int], int]] = {}
        self._checkpointed = time.monotonic()

    def head(self) -> dict[tuple[str, int], int]:
        return kafka.end_offsets(self.settings, list(self.position), admin=self.admin)

    def behind(self, targets: dict[tuple[str, int], int]) -> int:
        return sum(max(0, end - self.position[tp]) for tp, end in targets.items())

    async def run_until(self, targets: dict[tuple[str, int], int], progress: RebuildProgress | None = None) -> None:
        """Process until every partition reached its target offset (records past it are processed too)."""
        started, done = time.monotonic(), 0
        while self.behind(targets) > 0:
            records = self._poll()
            if records:
                await self.processor.process(records)
                self.buffer.advance(len(records))
                self._note_unstored(records)
                self.events += len(records)
                done += len(records)
            if progress is not None:
                progress.update(done)
            if self.options.max_rate > 0:
                ahead = done / self.options.max_rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            if self.buffer.pending and time.monotonic() - self._checkpointed >= self.options.checkpoint_s:
                await self.checkpoint(older_than=self.options.cold_after)

    def _poll(self) -> list[SourceRecord]:
        records = []
        for m in self.consumer.consume(self.options.batch, timeout=0.5):
            if m.error():
                raise RebuildRefused(f"reading {m.topic()}[{m.partition()}] failed: {m.error()}")
            records.append(SourceRecord(m.topic(), m.partition(), m.offset(), m.key(), m.value(),
                                        list(m.headers() or []), m.timestamp()[1] / 1000.0))
            self.position[(m.topic(), m.partition())] = m.offset() + 1
        return records

    def _note_unstored(self, records: list[SourceRecord]) -> None:
        """Remember, per aggregate the buffer holds unstored, the first record not stored yet (an aggregate's
        records are all on one partition: they are keyed by its id)."""
        for r in records:
            if r.key is not None:
                agg = r.key.decode(errors="replace")
                if agg in self.buffer.dirty and agg not in self.unstored:
                    self.unstored[agg] = ((r.topic, r.partition), r.offset)

    async def checkpoint(self, older_than: int | None = None) -> None:
        """Store what the buffer holds (all of it, or what went cold), then commit each partition below
        its first record whose state is not stored yet: a resumed rebuild re-reads nothing stored twice
        and skips nothing unstored."""
        from confluent_kafka import TopicPartition

        await self.buffer.flush(older_than)
        floor = dict(self.processor.held_floor)
        for agg in [a for a in self.unstored if a not in self.buffer.dirty]:
            del self.unstored[agg]
        for tp, offset in self.unstored.values():
            floor[tp] = min(offset, floor.get(tp, offset))
        offsets = [TopicPartition(t, p, min(pos, floor.get((t, p), pos))) for (t, p), pos in self.position.items()]
        await asyncio.to_thread(self.consumer.commit, offsets=offsets, asynchronous=False)
        self._checkpointed = time.monotonic()

    def close(self) -> None:
        self.consumer.close()


class RebuildLock:
    """Held for the whole rebuild; PostgreSQL releases it if this process dies."""

    def __init__(self, settings: Settings, projection: str) -> None:
        self.key = lock_key(projection)
        self.conn = postgres.connect(settings, autocommit=True,
                                     application_name=f"cqrs rebuild {projection} (pid {os.getpid()} on "
                                                      f"{socket.gethostname()})"[:63])
        if not postgres.try_advisory_lock(self.conn, self.key):
            holder = postgres.advisory_lock_holder(self.conn, self.key) or "another session"
            self.conn.close()
            raise RebuildRefused(f"a rebuild of {projection} is already running: {holder}; "
                                 "wait for it to finish or stop it (it resumes where it stopped)")

    def release(self) -> None:
        self.conn.close()


async def open_target(projection: str, settings: Settings) -> tuple[RebuildTarget, Any, list]:
    """The projection's rebuild target, the read database and the closers of their clients."""
    from psycopg_pool import AsyncConnectionPool

    from connectors import elasticsearch, mongo

    timeout_ms = int(settings.connect_timeout_s * 1000)
    client = mongo.async_mongo_client(settings, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms,
                                      socketTimeoutMS=None)
    db = client[settings.mongo_database]
    cache = redis.async_redis_client(settings)
    closers: list = [client.close, cache.aclose]
    if projection == "order-views":
        pool = AsyncConnectionPool(postgres.conninfo(settings), min_size=1, max_size=4, open=False,
                                   kwargs={"connect_timeout": postgres.connect_timeout(settings)})
        await pool.open(wait=True, timeout=settings.connect_timeout_s * 3)
        closers.append(pool.close)
        return OrderViewsTarget(db, pool, cache), db, closers
    if projection == "sales-stats":
        return SalesStatsTarget(db, cache, settings.es_products_alias), db, closers
    es = elasticsearch.async_es_client(settings, request_timeout=60)
    closers.append(es.close)
    return ProductSearchTarget(db, es, cache, settings.es_products_alias), db, closers


async def rebuild(projection: str, settings: Settings, options: RebuildOptions, progress: RebuildProgress) -> dict:
    if projection not in REBUILDABLE:
        raise RebuildRefused(f"unknown projection {projection!r}; rebuildable: {', '.join(REBUILDABLE)}")
    check_services(projection, settings)
    partial = require_whole_history(settings, projection, source_topics(projection, settings.topic_prefix),
                                    options.allow_partial)
    if partial:
        progress.say(partial)
    lock = RebuildLock(settings, projection)
    target, db, closers = await open_target(projection, settings)
    replay: BulkReplay | None = None
    try:
        versions = db[READ_MODEL_VERSIONS]
        await drop_expired(target, versions, projection, progress)
        record = await current(versions, projection)
        serving = await target.serving_version(record)
        if record.building:
            version, group = int(record.building["version"]), str(record.building["group"])
        else:
            version = record.next_version(await target.existing_versions() | {serving})
            group = rebuild_group(projection, version, settings.projection_group_suffix)
        await target.create(version)
        if not record.building:
            await versions.update_one({"_id": projection}, {"$set": {"building": {
                "version": version, "group": group, "started_at": time.time()}}}, upsert=True)
        resumed = record.building is not None
        buffer = ReplayBuffer(target.writer(version), max_states=options.max_states, flush_chunk=target.flush_chunk,
                              store_starts_empty=not resumed)
        processor = BatchProcessor(buffer, prepare_event_codecs(settings), MemoryProgress(),
                                   DeadLetters(settings, projection), SequenceGate(settings.gap_hold_seconds))
        replay = BulkReplay(settings, group, source_topics(projection, settings.topic_prefix), processor, buffer,
                            options)
        progress.say(f"{'resuming' if resumed else 'rebuilding'} {projection} version {version} "
                     f"(serving: {'version ' + str(serving) if serving else 'none'}), consumer group {group}")
        started = time.monotonic()

        head = replay.head()
        progress.start(f"{projection} v{version} replay", replay.behind(head))
        await replay.run_until(head, progress)
        await replay.checkpoint()
        progress.finish()
        await follow_head(replay, options, progress)
        await target.ready_to_serve(version)
        retired = await switch(target, versions, projection, version, serving, replay, options, progress)
        replay_s = time.monotonic() - started
        await target.after_switch(version)
        events = replay.events
        replay.close()
        replay = None
        kafka.delete_consumer_groups(settings, [group])
        progress.say(f"switched: {projection} serves version {version}; {events:,} events replayed into "
                     f"{len(buffer.stored):,} aggregates' documents in {duration(replay_s)} "
                     f"({events / replay_s:,.0f} events/s)")
        if retired is not None:
            await retire(target, versions, projection, retired, options, progress)
        return {"projection": projection, "version": version, "previous": serving or None, "events": events,
                "seconds": replay_s}
    finally:
        if replay is not None:
            replay.close()
        await close_all(closers)
        lock.release()


async def follow_head(replay: BulkReplay, options: RebuildOptions, progress: RebuildProgress) -> None:
    """Catch up with events published during the replay, until only a few are left to the head."""
    for _ in range(MAX_FOLLOW_ROUNDS):
        head = replay.head()
        left = replay.behind(head)
        if left <= options.head_distance:
            return
        progress.say(f"following the live head: {left:,} events published meanwhile")
        await replay.run_until(head)
        await replay.checkpoint()
    raise RebuildRefused(f"still {replay.behind(replay.head()):,} events behind the live head after "
                         f"{MAX_FOLLOW_ROUNDS} rounds: events arrive faster than the rebuild writes them")


async def switch(target: RebuildTarget, versions, projection: str, version: int,
                 serving: int, replay: BulkReplay, options: RebuildOptions,
                 progress: RebuildProgress) -> dict[str, Any] | None:
    """Fence the live workers, drain to the head seen after the fence, switch atomically. Returns the
    retired version's record (None if nothing served before)."""
    for attempt in range(1, options.switch_attempts + 1):
        await replay.run_until(replay.head())
        await replay.checkpoint()
        fence_id = uuid.uuid4().hex
        until = time.time() + FENCE_S
        fenced_at = time.monotonic()
        await versions.update_one({"_id": projection}, {"$set": {"fence": {"id": fence_id, "until": until}}},
                                  upsert=True)
        await replay.run_until(replay.head())
        await replay.checkpoint()
        retired = ({"version": serving, "retired_at": time.time(),
                    "drop_after": None if options.keep_old else time.time() + options.grace_s} if serving else None)
        if time.time() < until - SWITCH_MARGIN_S:
            if await target.switch(version, fence_id, retired or {}):
                progress.say(f"live writes held for {(time.monotonic() - fenced_at) * 1000:.0f} ms while "
                             f"switching")
                return retired
        await versions.update_one({"_id": projection, "fence.id": fence_id}, {"$set": {"fence": None}})
        progress.say(f"switch attempt {attempt} did not finish within the {FENCE_S:.0f} s fence; live writes "
                     f"resumed, trying again")
    raise RebuildRefused(f"could not switch {projection} to version {version} in {options.switch_attempts} "
                         f"attempts; rerun `cqrs rebuild {projection}` to resume")


async def retire(target: RebuildTarget, versions, projection: str, retired: dict[str, Any], options: RebuildOptions,
                 progress: RebuildProgress) -> None:
    old = retired["version"]
    if options.keep_old:
        progress.say(f"kept version {old} (--keep-old); it is no longer updated")
        return
    progress.say(f"version {old} stays readable for {options.grace_s:.0f} s for in-flight reads, then is dropped "
                 f"(--keep-old keeps it)")
    await asyncio.sleep(options.grace_s)
    await target.drop(old)
    await forget_retired(versions, projection, old)
    progress.say(f"dropped version {old}")


async def forget_retired(versions, projection: str, version: int) -> None:
    """Remove a dropped version from the record. Rewritten whole rather than with `$pull` (which the local
    read store does not apply to arrays of documents); only the rebuild holding the lock writes it."""
    record = await current(versions, projection)
    remaining = [r for r in record.retired if int(r["version"]) != version]
    await versions.update_one({"_id": projection}, {"$set": {"retired": remaining}})


async def drop_expired(target: RebuildTarget, versions, projection: str, progress: RebuildProgress) -> None:
    """Drop versions whose grace period ended while no rebuild ran (one interrupted during its grace)."""
    record = await current(versions, projection)
    for entry in record.retired:
        drop_after = entry.get("drop_after")
        if drop_after is not None and drop_after <= time.time():
            await target.drop(int(entry["version"]))
            await forget_retired(versions, projection, int(entry["version"]))
            progress.say(f"dropped version {entry['version']} (its grace period ended)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("projection", help=f"the read model to rebuild: {', '.join(REBUILDABLE)}")
    parser.add_argument("--keep-old", action="store_true", help="keep the previous version instead of dropping it")
    parser.add_argument("--allow-partial", action="store_true",
                        help="build and switch even though the topics no longer hold their first events")
    parser.add_argument("--grace-s", type=float, default=30.0,
                        help="how long the previous version stays after the switch before it is dropped")
    parser.add_argument("--batch", type=int, default=20_000, help="events per bulk batch")
    parser.add_argument("--max-rate", type=float, default=0.0,
                        help="events per second at most, to spare the read stores (0: no limit)")
    parser.add_argument("--checkpoint-s", type=float, default=10.0,
                        help="how often documents gone cold are written and offsets committed")
    parser.add_argument("--cold-after", type=int, default=300_000, metavar="EVENTS",
                        help="write an aggregate's document once this many events went by without changing it "
                             "(lower: less memory and finer resume points; higher: fewer rewrites)")


def options_from(args: argparse.Namespace) -> RebuildOptions:
    problems = [f"--{name.replace('_', '-')} must be {rule}" for name, ok, rule in (
        ("grace_s", args.grace_s >= 0, ">= 0"), ("batch", 1 <= args.batch <= 100_000, "between 1 and 100000"),
        ("max_rate", args.max_rate >= 0, ">= 0"), ("checkpoint_s", args.checkpoint_s > 0, "> 0"),
        ("cold_after", args.cold_after >= 0, ">= 0")) if not ok]
    if problems:
        raise RebuildRefused("; ".join(problems))
    return RebuildOptions(keep_old=args.keep_old, grace_s=args.grace_s, batch=args.batch, max_rate=args.max_rate,
                          checkpoint_s=args.checkpoint_s, cold_after=args.cold_after, allow_partial=args.allow_partial)


def main(args: argparse.Namespace, settings: Settings) -> int:
    progress = RebuildProgress()
    try:
        options = options_from(args)
        asyncio.run(rebuild(args.projection, settings, options, progress))
    except RebuildRefused as exc:
        print(f"cqrs rebuild: {exc}", file=sys.stderr, flush=True)
        return 1
    except IncompleteHistory as exc:
        print(f"cqrs rebuild: {exc}", file=sys.stderr, flush=True)
        return EXIT_INCOMPLETE
    return 0
