"""CommitGuard: a Faust worker commits exactly the source offsets its projection processed.

Processed means written to the sinks or dead-lettered; an event the sequence gate still holds keeps
its partition's commit below it, so a crash re-reads it instead of losing it.

Faust keeps committing on its own schedule (timer, rebalance, shutdown), but the offset it commits
for a source partition comes from `agents.offsets.SourceOffsets` instead of Faust's acknowledgement
bookkeeping, which can jump over records dropped around a rebalance. After each rebalance the
guard starts every partition again from the group's committed offset, and when a batch shows that
records were skipped it seeks the partition back, so they are read again rather than lost.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import NoReturn, Protocol

import faust
from faust.types import TP

from agents.dead_letters import SourceRecord
from agents.metrics import EVENTS, REREADS
from agents.engine import RetryPolicy
from agents.offsets import SourceOffsets, TopicPartitionKey
from agents.outages import StoreHealth
from agents import transport
from agents.transport import GuardedConsumer
from connectors import kafka

log = logging.getLogger("cqrs.worker")
RESEEK_AFTER_S = 2.0
EXIT_UNPROCESSED = 75  # EX_TEMPFAIL: restart me


class Settings(kafka.Settings, Protocol):
    """What the guard reads of the application's settings (passed in)."""

    projection_start: str
    worker_stall_s: float


class CommitGuard:
    def __init__(self, app: faust.App, settings: Settings, projection: str, source_topics: Sequence[str],
                 health: StoreHealth | None = None) -> None:
        self.app = app
        self.health = health or StoreHealth(projection)
        self.retry = RetryPolicy()
        self.settings = settings
        self.projection = projection
        self.group_id = app.conf.id
        self.source_topics = frozenset(source_topics)
        self.offsets = SourceOffsets()
        self.admin = kafka.admin_client(settings)
        self._seeks: dict[TopicPartitionKey, tuple[int, float]] = {}
        self._last_batch = time.monotonic()
        self._stalled_since: float | None = None
        self.held_floor: Callable[[], dict[TopicPartitionKey, int]] = dict

    def attach(self) -> None:
        """Make the app's consumer commit the source topics at the guard's offsets (its other topics,
        such as changelogs, keep Faust's)."""
        consumer = self.app.consumer
        if not isinstance(consumer, GuardedConsumer):
            raise RuntimeError(f"{self.projection}: the worker's broker URLs must use the "
                               f"{transport.SCHEME}:// transport, not {type(consumer).__module__}")
        consumer.offset_source = self

    def governs(self, tp: TP) -> bool:
        return tp.topic in self.source_topics

    def committable(self, tp: TP) -> int | None:
        key = (tp.topic, tp.partition)
        offset = self.offsets.committable(key)
        held = self.held_floor().get(key)
        return offset if offset is None or held is None else min(offset, held)

    async def admit(self, records: Sequence[SourceRecord]) -> list[SourceRecord]:
        """The records of the batch to process now, in order; redeliveries are dropped and skipped
        records are read again."""
        self._last_batch = time.monotonic()
        self._stalled_since = None
        generation = self.app.consumer_generation_id
        if generation != self.offsets.generation:
            self.offsets.reset(generation)
            self._seeks.clear()
        unknown = self.offsets.unknown(records)
        if unknown:  # Kafka restarting is an outage: waited out like a sink's
            await self.retry.run(f"{self.projection}: committed offsets", self._start, unknown, health=self.health)
        admission = self.offsets.admit(records)
        if admission.redelivered:
            EVENTS.labels(self.projection, "redelivered").inc(admission.redelivered)
        for tp, offset in admission.reread_from.items():
            await self._reread(tp, offset)
        return admission.process

    def done(self, processed: Sequence[SourceRecord]) -> None:
        self.offsets.advance(processed)

    async def idle_ends(self, owned: Iterable[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Owned partitions that have delivered nothing yet: start them where processing will begin (the
        group's committed offset) and return where their logs end, so that one with nothing to apply can be
        reported caught up."""
        idle = [tp for tp in owned if not self.offsets.known(tp)]
        if not idle:
            return {}
        await self._start(idle)
        return await asyncio.to_thread(kafka.end_offsets, self.settings, idle, admin=self.admin)

    async def _start(self, tps: list[TopicPartitionKey]) -> None:
        committed = await asyncio.to_thread(kafka.committed_offsets, self.settings, self.group_id, tps,
                                            admin=self.admin)
        fresh = [tp for tp in tps if committed.get(tp) is None]
        earliest = {}
        if fresh and self.settings.projection_start == "earliest":
            earliest = await asyncio.to_thread(kafka.earliest_offsets, self.settings, fresh, admin=self.admin)
        for tp in tps:
            start = committed.get(tp)
            if start is None:
                start = earliest.get(tp)
            if start is not None and not self.offsets.known(tp):  # started meanwhile (a batch or a tick):
                self.offsets.start(tp, start)                     # never move a partition back

    async def _reread(self, tp: TopicPartitionKey, offset: int) -> None:
        """Seek `tp` back to `offset`, once per stall of RESEEK_AFTER_S; jump only over offsets the
        broker no longer holds."""
        last = self._seeks.get(tp)
        now = time.monotonic()
        if last is not None and last[0] == offset and now - last[1] < RESEEK_AFTER_S:
            return
        try:
            earliest = (await asyncio.to_thread(kafka.earliest_offsets, self.settings, [tp],
                                                admin=self.admin)).get(tp, 0)
        except Exception as exc:  # e.g. Kafka restarting: the next batch or liveness check tries again
            log.warning("%s: cannot re-read %s[%d] yet: %s", self.projection, *tp, exc)
            return
        if earliest > offset:
            log.error("%s: offsets %d..%d of %s[%d] were deleted by retention before they were processed",
                      self.projection, offset, earliest - 1, *tp)
            EVENTS.labels(self.projection, "lost_to_retention").inc(earliest - offset)
            self.offsets.start(tp, earliest)
            offset = earliest
        log.warning("%s: records of %s[%d] from offset %d were skipped by the consumer; reading them again",
                    self.projection, *tp, offset)
        REREADS.labels(self.projection).inc()
        self._seeks[tp] = (offset, now)
        try:  # in the consumer's own thread, like Faust's seeks
            await self.app.consumer.seek_wait({TP(*tp): offset})
        except Exception as exc:  # e.g. the partition was just revoked; the next batch tries again
            log.warning("%s: seeking %s[%d] to %d failed: %s", self.projection, *tp, offset, exc)
            self._seeks.pop(tp, None)

    async def watch(self) -> None:
        """Liveness: if nothing arrived for `worker_stall_s` while an assigned source partition has
        records past the next offset to process, seek those partitions back to it; if still nothing
        after as long again, exit (crash-only) so a fresh consumer takes over. Bounds any stall of
        the consumer underneath to about twice `worker_stall_s`."""
        now = time.monotonic()
        stall = self.settings.worker_stall_s
        if self.health.down:  # waiting for a store with its partitions paused: not a stall
            self._last_batch, self._stalled_since = now, None
            return
        if now - self._last_batch < stall:
            return
        assigned = [(tp.topic, tp.partition) for tp in self.app.consumer.assignment()
                    if tp.topic in self.source_topics]
        if not assigned:
            return
        self._last_batch = now  # the checks below run at most once per stall period
        ends = await asyncio.to_thread(kafka.end_offsets, self.settings, assigned, admin=self.admin)
        unknown = [tp for tp in assigned if not self.offsets.known(tp)]
        committed = await asyncio.to_thread(kafka.committed_offsets, self.settings, self.group_id, unknown,
                                            admin=self.admin)
        behind = {}
        for tp in assigned:
            start = self.offsets.committable(tp) if self.offsets.known(tp) else committed.get(tp)
            if start is None:
                start = 0 if self.settings.projection_start == "earliest" else ends.get(tp, 0)
            if ends.get(tp, 0) > start:
                behind[tp] = start
        if not behind:
            self._stalled_since = None
            return
        if self._stalled_since is not None:
            exit_stalled(self.projection, behind, now - self._stalled_since + stall)
        self._stalled_since = now
        log.warning("%s: nothing received for %.0fs though %s have records to process; reading them again",
                    self.projection, stall, ", ".join(f"{t}[{p}]@{o}" for (t, p), o in behind.items()))
        for tp, offset in behind.items():
            self._seeks.pop(tp, None)
            await self._reread(tp, offset)


    async def kafka_answers(self) -> bool:
        """Whether the cluster answers a metadata request within the connect timeout."""
        try:
            await asyncio.to_thread(self.admin.list_topics, timeout=self.settings.connect_timeout_s)
        except Exception:  # noqa: BLE001 - any failure means "not answering"
            return False
        return True


def exit_stalled(projection: str, behind: dict[TopicPartitionKey, int], waited: float) -> NoReturn:
    exit_unprocessed(projection, RuntimeError(
        f"consumer stalled: nothing received for {waited:.0f}s with records waiting in "
        + ", ".join(f"{t}[{p}] from offset {o}" for (t, p), o in behind.items())))


def exit_unprocessed(name: str, exc: BaseException) -> NoReturn:
    """Crash-only recovery: a worker that cannot make progress (a failure that is not an outage, past
    its retries; an outage past its limit; a stalled consumer) exits at once, non-zero, before anything
    acknowledges its current batch. Its offsets were committed only up to what it processed, so the batch
    is read again by whichever worker takes the partitions over (a restart, or another member of the
    group)."""
    log.critical("%s worker stopping, its current batch unprocessed: %s: %s", name, type(exc).__name__, exc,
                 exc_info=exc)
    logging.shutdown()
    os._exit(EXIT_UNPROCESSED)
