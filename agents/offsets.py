"""SourceOffsets: the projection's own account of which source offsets it has processed.

Why it exists: the consumer library underneath Faust may, around a rebalance, drop records it had
already fetched and then treat the hole as a gap it can commit past (observed with faust-streaming
0.15: events produced during a rebalance never reached the agent, yet their offsets were committed).
A projection must never commit an offset it has not processed, so it keeps the next offset to
process per partition itself and commits exactly that.

Guarantee: per partition, records are processed in offset order with no offset skipped. A record
below the next offset was processed already (a redelivery) and is skipped; a record above it means
something was dropped on the way, so that record and the rest of its partition in the batch are
left for a re-read from the next offset (the caller seeks back). The only offsets ever jumped are
those the broker no longer has (deleted by retention), and that is reported.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

TopicPartitionKey = tuple[str, int]


class OffsetRecord(Protocol):
    topic: str
    partition: int
    offset: int


@dataclass
class Admission:
    """A batch split by offset: what to process, how many were redeliveries, where to re-read from."""

    process: list = field(default_factory=list)
    redelivered: int = 0
    reread_from: dict[TopicPartitionKey, int] = field(default_factory=dict)


class SourceOffsets:
    def __init__(self) -> None:
        self._next: dict[TopicPartitionKey, int] = {}
        self.generation: int | None = None

    def reset(self, generation: int | None) -> None:
        """Forget every partition: after a rebalance another worker may have moved them on."""
        self._next.clear()
        self.generation = generation

    def known(self, tp: TopicPartitionKey) -> bool:
        return tp in self._next

    def start(self, tp: TopicPartitionKey, offset: int) -> None:
        """The partition's next offset to process (its committed offset, or where consumption begins)."""
        self._next[tp] = offset

    def unknown(self, records: Iterable[OffsetRecord]) -> list[TopicPartitionKey]:
        return list(dict.fromkeys(tp for r in records if (tp := (r.topic, r.partition)) not in self._next))

    def admit(self, records: Sequence[OffsetRecord]) -> Admission:
        """Split `records` (each partition's in offset order); partitions never started are taken to
        start at their first record here."""
        out = Admission()
        expected: dict[TopicPartitionKey, int] = {}
        for record in records:
            tp = (record.topic, record.partition)
            if tp in out.reread_from:
                continue
            want = expected.get(tp, self._next.get(tp, record.offset))
            if record.offset < want:
                out.redelivered += 1
            elif record.offset == want:
                out.process.append(record)
                expected[tp] = want + 1
            else:
                out.reread_from[tp] = want
        return out

    def advance(self, processed: Iterable[OffsetRecord]) -> None:
        """Mark `processed` (as admitted, and written to the sinks) done."""
        for record in processed:
            tp = (record.topic, record.partition)
            if record.offset + 1 > self._next.get(tp, -1):
                self._next[tp] = record.offset + 1

    def committable(self, tp: TopicPartitionKey) -> int | None:
        """The offset to commit: every offset below it has been processed."""
        return self._next.get(tp)
