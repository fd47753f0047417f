"""The batch pipeline every projection runs, live (under Faust) and in bulk (rebuild, benchmark):

decode (Avro) -> dedup (recent event ids) -> SequenceGate (per-aggregate order) -> enrich once per
batch -> pure projector per event -> one bulk write per sink -> record progress.

Guarantees, under at-least-once delivery:
- Idempotent: the durable last-applied sequence of each aggregate lives in its sink state (views
  carry `last_seq`, the sales ledger its `seq`), and progress tables are advanced only after the sink
  write succeeded, so a redelivered or replayed event is skipped, never applied twice.
- Ordered: per aggregate, events are applied strictly in sequence; gaps are held (bounded), then
  dead-lettered, never applied out of order.
- Complete: a stored sequence ahead of the progress tables marks a write that may have died halfway
  through the projection's documents or stores; that aggregate's stored state is written again, whole.
- Nothing silently lost: undecodable events, projector failures, documents a sink rejects and
  expired gaps go to the dead-letter topic, and processing continues. A store outage is waited out
  (RetryPolicy, StoreHealth); any other failure past its bounded retries raises SinkFailed out of
  `process`: the worker stops without marking the batch processed, and it is read again after the restart.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agents import failpoints
from agents.dead_letters import SourceRecord
from agents.gate import Admitted, SequenceGate
from agents.metrics import BATCH_SIZE, EVENTS, HELD, LAG_SECONDS, LAST_APPLIED, SINK_LATENCY
from agents.outages import StoreHealth, outage_store
from schemas.codec import DecodeError, EventCodec
from tables.progress import RECENT_IDS

log = logging.getLogger("cqrs.projection")


class Delivered(dict):
    """A decoded event (its fields, as the dict every projection reads) together with the Kafka record it
    came from: dead letters, progress and the commit floor of held events need the record, and it travels
    with its event through the sequence gate instead of being looked up by object identity."""

    __slots__ = ("record",)

    def __init__(self, fields: Mapping[str, Any], record: SourceRecord) -> None:
        super().__init__(fields)
        self.record = record


class Projection:
    """A read model the engine keeps: state I/O at the edges (`load`, `references`, `write`), pure `apply`
    in the middle. A projection subclasses this and implements those five; the hooks after them are
    explicit defaults that a projection overrides when it needs them."""

    name: str
    sinks: str  # the stores one `write` goes to, e.g. "mongodb", for the sink latency metric
    # True when a write never replaces a newer stored state: an aggregate whose run starts at its first
    # event and that the progress tables never saw need not be loaded.
    skips_loading_new_aggregates: bool = False

    async def load(self, aggregate_ids: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def last_seq(self, state: Any) -> int:
        raise NotImplementedError

    async def references(self, events: list[Mapping[str, Any]]) -> Any:
        raise NotImplementedError

    def apply(self, state: Any, event: Mapping[str, Any], refs: Any) -> Any:
        raise NotImplementedError

    async def write(self, changed: dict[str, Any]) -> dict[str, str]:
        """Persist changed states; returns {aggregate_id: error} for aggregates that could not be written."""
        raise NotImplementedError

    def needs_write(self, stored: Any, state: Any) -> bool:
        """Whether applying events to the `stored` state changed what the store keeps. When not, the events
        count as applied (the progress tables keep their sequence) and nothing is written: the stored
        `last_seq` then trails the tables, which `_admit` and `_incomplete` already allow for."""
        return True

    async def target_serving(self, record: Any) -> None:
        """Write into the read-model version `record` (a ServingRecord) names as serving."""

    async def tick(self) -> None:
        """Periodic upkeep (e.g. copies a store did not take yet); runs on the worker's timer."""

    def assume_stored(self, aggregate_ids: set[str]) -> None:
        """Before a bulk write: which of the aggregates written next the store already holds."""

    def as_stored(self, state: Any) -> Any:
        """A state as it stands once written (a bulk replay keeps states between writes)."""
        return state


class Progress(Protocol):
    """Per-aggregate progress: last applied sequence and the ids of the last few applied events."""

    def last(self, aggregate_id: str) -> int: ...

    def recent(self, aggregate_id: str) -> Sequence[str]: ...

    def record(self, aggregate_id: str, seq: int, event_ids: Sequence[str], partition: int) -> None: ...


class MemoryProgress:
    """Progress kept in dicts: for bulk runs (rebuild, benchmarks) and tests."""

    def __init__(self) -> None:
        self.sequence: dict[str, int] = {}
        self.recent_ids: dict[str, list[str]] = {}

    def last(self, aggregate_id: str) -> int:
        return self.sequence.get(aggregate_id, 0)

    def recent(self, aggregate_id: str) -> Sequence[str]:
        return self.recent_ids.get(aggregate_id, ())

    def record(self, aggregate_id: str, seq: int, event_ids: Sequence[str], partition: int = 0) -> None:
        self.sequence[aggregate_id] = seq
        self.recent_ids[aggregate_id] = [*self.recent_ids.get(aggregate_id, ()), *event_ids][-RECENT_IDS:]


class DeadLetterSink(Protocol):
    def send(self, record: SourceRecord, *, reason: str, error: str, attempts: int = 1) -> None: ...

    async def flush(self, timeout: float = 30.0) -> None: ...


@dataclass
class BatchReport:
    received: int = 0
    applied: int = 0
    duplicates: int = 0  # an event id the aggregate's recent ids already hold
    stale: int = 0  # a sequence number at or below the aggregate's last applied one
    dead_lettered: int = 0
    written_aggregates: int = 0
    rewritten: int = 0  # aggregates whose stored state was written again: an earlier write may be incomplete
    last_occurred_at: Any = None


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of one step of a batch. A store outage is waited out with capped exponential backoff for
    up to `outage_limit_s`, reported through the worker's StoreHealth meanwhile; any other failure (a
    bug, a request the store rejects) is retried `attempts` times, then raised as SinkFailed. Each
    attempt is bounded by `attempt_timeout_s`, so a store that accepts connections and never answers is
    an outage too, not a hang."""

    attempts: int = 5
    base_delay_s: float = 0.2
    max_delay_s: float = 2.0
    outage_limit_s: float = 3600.0
    attempt_timeout_s: float = 60.0

    async def run(self, what: str, fn: Callable[..., Awaitable[Any]], *args: Any,
                  health: StoreHealth | None = None) -> Any:
        delay = self.base_delay_s
        failures = 0
        down: set[str] = set()
        while True:
            try:
                result = await asyncio.wait_for(fn(*args), self.attempt_timeout_s)
            except Exception as exc:  # a sink raising anything is classified, retried, then reported
                store = outage_store(exc)
                if store is None:
                    failures += 1
                    if failures >= self.attempts:
                        raise SinkFailed(f"{what} failed after {failures} attempts: {type(exc).__name__}: {exc}",
                                         failures) from exc
                    log.warning("%s failed (attempt %d/%d): %s; retrying in %.1fs", what, failures, self.attempts,
                                exc, delay)
                else:
                    down.add(store)
                    if health is not None:
                        health.failed(store, what, exc)
                        if health.outage_s() > self.outage_limit_s:
                            raise SinkFailed(f"{what}: {store} unavailable for over {self.outage_limit_s:.0f}s: "
                                             f"{type(exc).__name__}: {exc}", failures) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_delay_s)
                continue
            if down and health is not None:
                health.recovered(down)
            return result


class SinkFailed(RuntimeError):
    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class BatchProcessor:
    def __init__(self, projection: Projection, codecs: Mapping[str, EventCodec], progress: Progress,
                 dead_letters: DeadLetterSink, gate: SequenceGate | None = None,
                 retry: RetryPolicy = RetryPolicy(), health: StoreHealth | None = None) -> None:
        self.projection = projection
        self.health = health
        self.codecs = codecs
        self.progress = progress
        self.dead_letters = dead_letters
        self.gate = gate or SequenceGate()
        self.retry = retry
        self.held_floor: dict[tuple[str, int], int] = {}

    async def _retry(self, what: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return await self.retry.run(f"{self.projection.name}: {what}", fn, *args, health=self.health)

    def _dead_letter(self, events: Iterable[Delivered], reason: str, error: str, report: BatchReport,
                     attempts: int = 1) -> None:
        for event in events:
            self.dead_letters.send(event.record, reason=reason, error=error, attempts=attempts)
            report.dead_lettered += 1

    def _to_load(self, events: list[dict[str, Any]]) -> list[str]:
        """Aggregates whose stored state the batch needs: all of them, except, for projections whose
        writes never replace a newer stored state, those whose run here starts at their first event
        and that the progress tables have never seen."""
        first: dict[str, int] = {}
        for event in events:
            first.setdefault(event["aggregate_id"], event["sequence_number"])
        if not self.projection.skips_loading_new_aggregates:
            return list(first)
        return [agg for agg, seq in first.items() if seq != 1 or self.progress.last(agg) != 0]

    def _incomplete(self, stale: Iterable[Mapping[str, Any]], states: Mapping[str, Any]) -> dict[str, list]:
        """Aggregates whose stored state is ahead of the progress tables, with their stale events: the sink
        holds a sequence the tables never recorded, so the attempt that wrote it may have died before its
        last write (a projection writes several documents or stores per aggregate). Their stored state is
        written again, whole; every write is idempotent, so a complete earlier attempt changes nothing."""
        found: dict[str, list] = {}
        for event in stale:
            agg, seq = event["aggregate_id"], event["sequence_number"]
            state = states.get(agg)
            if state is not None and self.progress.last(agg) < seq <= self.projection.last_seq(state):
                found.setdefault(agg, []).append(event)
        return found

    async def process(self, records: Sequence[SourceRecord]) -> BatchReport:
        """One batch: decode, drop duplicates, load state, order through the gate, apply, write, then
        record progress — only after every write of the batch succeeded (see `_incomplete`)."""
        report = BatchReport(received=len(records))
        BATCH_SIZE.labels(self.projection.name).observe(len(records))
        fresh = self._fresh(self._decode(records, report), report)
        ids = self._to_load(fresh)
        states = await self._retry("load state", self.projection.load, ids) if ids else {}
        admitted = self._admit(fresh, states, report)
        rewrite = self._incomplete(admitted.duplicates, states)
        changed, applied = await self._apply(admitted, states, report)
        rewritten = self._add_rewrites(rewrite, states, changed, applied)
        report.rewritten = len(rewritten)
        self._skip_unchanged(changed, states, rewrite)
        await self._write(changed, applied, report)
        self._record(applied, rewritten, states, report)
        if report.dead_lettered:
            await self._retry("dead letters", self.dead_letters.flush)
        self._floor_held()
        self._count(report)
        return report

    def _decode(self, records: Sequence[SourceRecord], report: BatchReport) -> list[Delivered]:
        events: list[Delivered] = []
        for record in records:
            codec = self.codecs.get(record.topic)
            try:
                if codec is None:
                    raise DecodeError(f"no codec for topic {record.topic}")
                if record.value is None:
                    raise DecodeError("record has no value")
                events.append(Delivered(codec.decode(record.value), record))
            except DecodeError as exc:
                self.dead_letters.send(record, reason="decode_error", error=str(exc))
                report.dead_lettered += 1
        return events

    def _fresh(self, events: list[Delivered], report: BatchReport) -> list[Delivered]:
        """The events whose ids the progress tables have not seen applied."""
        fresh = []
        for event in events:
            if event["event_id"] in self.progress.recent(event["aggregate_id"]):
                report.duplicates += 1
            else:
                fresh.append(event)
        return fresh

    def _admit(self, fresh: list[Delivered], states: Mapping[str, Any], report: BatchReport) -> Admitted:
        def last_applied(agg: str) -> int:
            return max(self.progress.last(agg), self.projection.last_seq(states.get(agg)))

        admitted = self.gate.admit(fresh, last_applied)
        HELD.labels(self.projection.name).set(self.gate.held)
        report.stale += len(admitted.duplicates)
        if admitted.expired:
            self._dead_letter(admitted.expired, "sequence_gap",
                              "held past the gap timeout waiting for a missing sequence number", report)
            EVENTS.labels(self.projection.name, "gap_expired").inc(len(admitted.expired))
        return admitted

    async def _apply(self, admitted: Admitted, states: Mapping[str, Any],
                     report: BatchReport) -> tuple[dict[str, Any], dict[str, list[Delivered]]]:
        """The new state of each aggregate with events ready, and the events it applied. A poison event is
        dead-lettered with the events of its aggregate that depend on it."""
        ready = [e for run in admitted.ready.values() for e in run]
        refs = await self._retry("load references", self.projection.references, ready) if ready else None
        changed: dict[str, Any] = {}
        applied: dict[str, list[Delivered]] = {}
        for agg, run in admitted.ready.items():
            state = states.get(agg)
            done: list[Delivered] = []
            for i, event in enumerate(run):
                try:
                    state = self.projection.apply(state, event, refs)
                except Exception as exc:  # a poison event: dead-letter it and what depends on it
                    self._dead_letter(run[i:], "projector_error", f"{type(exc).__name__}: {exc}", report)
                    EVENTS.labels(self.projection.name, "failed").inc()
                    break
                done.append(event)
            if done:
                changed[agg] = state
                applied[agg] = done
        return changed, applied

    @staticmethod
    def _add_rewrites(rewrite: dict[str, list], states: Mapping[str, Any], changed: dict[str, Any],
                      applied: dict[str, list]) -> set[str]:
        """Adds the stored state of each incomplete aggregate to the writes (unless new events change it
        anyway, which writes it whole); returns those aggregates."""
        rewritten: set[str] = set()
        for agg, stale in rewrite.items():
            if agg not in changed:
                changed[agg] = states[agg]
                applied[agg] = stale
                rewritten.add(agg)
        return rewritten

    def _skip_unchanged(self, changed: dict[str, Any], states: Mapping[str, Any], rewrite: Mapping[str, Any]) -> None:
        """Drops the writes that would change nothing the store keeps (an aggregate to write again whole is
        always written)."""
        for agg in [a for a, state in changed.items()
                    if a not in rewrite and not self.projection.needs_write(states.get(a), state)]:
            del changed[agg]

    async def _write(self, changed: dict[str, Any], applied: dict[str, list[Delivered]], report: BatchReport) -> None:
        """One write of every changed state; the events of aggregates the store rejected are dead-lettered
        (and leave `applied`)."""
        if not changed:
            return
        started = time.perf_counter()
        failures = await self._retry("write", self.projection.write, changed)
        SINK_LATENCY.labels(self.projection.name, self.projection.sinks).observe(time.perf_counter() - started)
        failpoints.reach("after-sink-write")
        for agg, error in failures.items():
            self._dead_letter(applied.pop(agg, []), "sink_error", error, report, attempts=self.retry.attempts)

    def _record(self, applied: dict[str, list[Delivered]], rewritten: set[str], states: Mapping[str, Any],
                report: BatchReport) -> None:
        for agg, done in applied.items():
            seq = done[-1]["sequence_number"]
            if agg in rewritten:
                seq = self.projection.last_seq(states[agg])
            else:
                report.applied += len(done)
            self.progress.record(agg, seq, [e["event_id"] for e in done], done[-1].record.partition)
            report.written_aggregates += 1
            for event in done:
                if report.last_occurred_at is None or event["occurred_at"] > report.last_occurred_at:
                    report.last_occurred_at = event["occurred_at"]

    def _floor_held(self) -> None:
        """The lowest offset per source partition of the events the gate holds: commits stay below it."""
        self.held_floor = {}
        for event in self.gate.held_events():
            tp = (event.record.topic, event.record.partition)
            self.held_floor[tp] = min(event.record.offset, self.held_floor.get(tp, event.record.offset))

    def _count(self, report: BatchReport) -> None:
        name = self.projection.name
        EVENTS.labels(name, "applied").inc(report.applied)
        EVENTS.labels(name, "duplicate").inc(report.duplicates)
        EVENTS.labels(name, "stale").inc(report.stale)
        EVENTS.labels(name, "rewritten").inc(report.rewritten)
        if report.last_occurred_at is not None:
            ts = report.last_occurred_at.timestamp()
            LAST_APPLIED.labels(name).set(ts)
            LAG_SECONDS.labels(name).set(max(0.0, time.time() - ts))
