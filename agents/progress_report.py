"""ProgressReport: a worker tells the query API how far its view has applied each partition it owns.

After every batch and on every tick the worker writes, per source partition, the next offset to apply,
the partition's end offset as its consumer saw it, the time, and the timestamp of the last event it
applied (domain.freshness.PartitionReport), into one Redis hash per consumer group, and announces the
partitions on a channel of the same name. The query API reads the hash to say whether an answer is
current, and waits on the channel for a reader's own writes. Reporting is best effort
(connectors.redis.BestEffort) and never holds the pipeline back; a skipped report only makes answers
look older than they are.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from agents.dead_letters import SourceRecord
from connectors.redis import BestEffort
from domain.freshness import PartitionReport, progress_field, progress_key

Partition = tuple[str, int]


class ProgressReport:
    def __init__(self, redis: Any, consumer_group: str, applied: Callable[[Partition], int | None],
                 head: Callable[[Partition], int | None], clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.key = progress_key(consumer_group)
        self.applied = applied
        self.head = head
        self.clock = clock
        self.writes = BestEffort("progress report")
        self.last_event_at: dict[Partition, float] = {}

    def reports(self, partitions: Iterable[Partition]) -> dict[str, str]:
        now = self.clock()
        out = {}
        for tp in partitions:
            applied, head = self.applied(tp), self.head(tp)
            if applied is None and head == 0:
                applied = 0  # an empty partition: nothing to apply, so caught up
            if applied is None or head is None:
                continue  # not started on this partition yet: its previous report still stands
            out[progress_field(*tp)] = PartitionReport(applied, head, now, self.last_event_at.get(tp)).dumps()
        return out

    async def after_batch(self, records: Sequence[SourceRecord]) -> None:
        """Report the batch's partitions; an event the sequence gate still holds is not applied yet."""
        partitions = {(r.topic, r.partition) for r in records}
        applied = {tp: self.applied(tp) for tp in partitions}
        for r in records:
            below = applied[(r.topic, r.partition)]
            if r.timestamp is not None and below is not None and r.offset < below:
                tp = (r.topic, r.partition)
                self.last_event_at[tp] = max(r.timestamp, self.last_event_at.get(tp, r.timestamp))
        await self.publish(partitions)

    async def publish(self, partitions: Iterable[Partition]) -> None:
        """Write the reports, and announce each partition on the channel of the same name, which wakes
        readers waiting for their own writes (no polling)."""
        fields = self.reports(partitions)
        if not fields:
            return

        async def write() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hset(self.key, mapping=fields)
                for field in fields:
                    pipe.publish(self.key, field)
                await pipe.execute()

        await self.writes.run(write)

    def forget(self, owned: set[Partition]) -> None:
        """Drop what is kept of partitions this worker no longer owns."""
        for tp in [tp for tp in self.last_event_at if tp not in owned]:
            del self.last_event_at[tp]
