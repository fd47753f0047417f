"""What the operations dashboard shows, read from Kafka: the per-process state behind
`GET /api/ops/pipeline` (app/operations/dashboard.py has the routes).

Per projection the JSON gives the totals `cqrs lag` computes (app/operations/lag.py `LagReader`, reused here):
committed offsets, end offsets, offset lag and event-time lag, plus a throughput in events/s. The
throughput is the change of the group's position (end minus offset lag, summed over its partitions)
between the two most recent samples, divided by the seconds between them; it is null until a second
sample exists and never negative (a group that was deleted and started again reads 0).

Samples live in a ring in this process (`Samples`): at most one per `MIN_SAMPLE_INTERVAL_S`, none older
than `WINDOW_S`, so memory is bounded whoever polls. A call within `MIN_SAMPLE_INTERVAL_S` of the last
sample is answered with that sample, so many open pages cost Kafka one sample a second at most.

Dead letters (`DeadLetterTally`) are counted per projection from the `dlq.projection` header,
incrementally: each call reads on from where the previous one stopped, at most `DLQ_MAX_RECORDS_PER_CALL`
records and `connect_timeout_s` seconds; `pending` says how many are still to be counted. `total` is
what the topic holds now; the per-projection counts include letters retention has deleted since they
were counted.

Rebuilds in progress are the consumer groups named `cqrs-<projection>-rebuild*` that exist in Kafka,
each with its lag on the projection's source topics.

Every Kafka call is bounded by `connect_timeout_s` and runs in a worker thread (`PipelineMonitor.document`);
an unreachable Kafka raises ServiceUnavailable, missing topics LagError.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from agents.dead_letters import DLQ_TOPIC, describe
from app.operations.lag import LagReader, LagRow, LagTotal, totals
from agents.projections import PROJECTIONS, consumer_group
from app.settings import Settings
from connectors import kafka

WINDOW_S = 600.0
MIN_SAMPLE_INTERVAL_S = 1.0
DLQ_MAX_RECORDS_PER_CALL = 20_000
UNKNOWN_PROJECTION = "?"


# ---- samples --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    """One projection at one sample: totals over its partitions and the throughput since the sample before."""

    t: float
    position: int
    committed: int
    end: int
    offset_lag: int
    event_time_lag_s: float | None
    throughput_eps: float | None


def position_of(rows: Iterable[LagRow]) -> int:
    """Records the group is past, summed over its partitions (end minus offset lag: a partition without a
    commit counts from its earliest retained offset)."""
    return sum(r.end - r.offset_lag for r in rows)


def throughput(previous: Point | None, position: int, t: float) -> float | None:
    """Events/s between `previous` and now; None without a previous sample or elapsed time, never negative."""
    if previous is None or t <= previous.t:
        return None
    return max(0, position - previous.position) / (t - previous.t)


def make_point(rows: list[LagRow], total: LagTotal, previous: Point | None, t: float) -> Point:
    position = position_of(rows)
    return Point(t, position, sum(r.committed or 0 for r in rows), sum(r.end for r in rows), total.offset_lag,
                 total.event_time_lag_s, throughput(previous, position, t))


class Samples:
    """A bounded ring of samples: one per `min_interval_s` at most, none older than `window_s`."""

    def __init__(self, window_s: float = WINDOW_S, min_interval_s: float = MIN_SAMPLE_INTERVAL_S) -> None:
        self.window_s = window_s
        self.min_interval_s = min_interval_s
        self.ring: deque[dict[str, Point]] = deque(maxlen=int(window_s / min_interval_s) + 1)

    def latest(self) -> dict[str, Point] | None:
        return self.ring[-1] if self.ring else None

    def due(self, t: float) -> bool:
        """Whether a sample taken at `t` may be added (the last one is at least `min_interval_s` old)."""
        last = self.latest()
        return last is None or t - next(iter(last.values())).t >= self.min_interval_s

    def add(self, rows: list[LagRow], t: float) -> dict[str, Point]:
        """Append the sample of `rows` taken at `t` and drop those older than the window."""
        previous = self.latest() or {}
        sample = {total.projection: make_point([r for r in rows if r.projection == total.projection], total,
                                               previous.get(total.projection), t)
                  for total in totals(rows)}
        self.ring.append(sample)
        while self.ring and t - next(iter(self.ring[0].values())).t > self.window_s:
            self.ring.popleft()
        return sample

    def series(self, projection: str) -> list[Point]:
        return [s[projection] for s in self.ring if projection in s]


# ---- dead letters ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeadLetterCounts:
    topic: str
    total: int
    pending: int
    by_projection: dict[str, int]


def tally_headers(counts: dict[str, int], headers: list[tuple[str, bytes]] | None) -> None:
    """Count one dead letter under its `dlq.projection` header (UNKNOWN_PROJECTION without one)."""
    projection = describe(headers).get("projection") or UNKNOWN_PROJECTION
    counts[projection] = counts.get(projection, 0) + 1


@dataclass
class DeadLetterTally:
    """Counts of the dead-letter topic per projection, read on from where the last refresh stopped."""

    settings: Settings
    topic: str = DLQ_TOPIC
    max_records: int = DLQ_MAX_RECORDS_PER_CALL
    positions: dict[int, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {p: 0 for p in PROJECTIONS})
    admin: AdminClient | None = None   # kept between refreshes; made here when not given

    def __post_init__(self) -> None:
        self.admin = self.admin or kafka.admin_client(self.settings)

    def refresh(self) -> DeadLetterCounts:
        """Read what was appended since the last refresh (bounded) and return the counts; a missing topic
        holds nothing. Raises KafkaException or TimeoutError when Kafka does not answer in time."""
        timeout = self.settings.connect_timeout_s
        meta = self.admin.list_topics(timeout=timeout).topics.get(self.topic)
        if meta is None or meta.error is not None:
            return DeadLetterCounts(self.topic, 0, 0, dict(self.counts))
        tps = [(self.topic, p) for p in sorted(meta.partitions)]
        low = {p: o for (_, p), o in kafka.earliest_offsets(self.settings, tps, timeout, self.admin).items()}
        high = {p: o for (_, p), o in kafka.end_offsets(self.settings, tps, timeout, self.admin).items()}
        starts = {p: max(self.positions.get(p, 0), low[p]) for p in high}
        wanted = {p: s for p, s in starts.items() if s < high[p]}
        self.positions.update(starts)
        if wanted:
            self._read(wanted, high)
        pending = sum(max(0, high[p] - self.positions[p]) for p in high)
        return DeadLetterCounts(self.topic, sum(high[p] - low[p] for p in high), pending, dict(self.counts))

    def _read(self, starts: dict[int, int], high: dict[int, int]) -> None:
        """Consume from `starts` towards `high`, at most `max_records` and `connect_timeout_s` seconds."""
        consumer = Consumer({**kafka.base_config(self.settings), "group.id": f"cqrs-ops-dlq-{uuid.uuid4()}",
                             "enable.auto.commit": False, "enable.partition.eof": False, "fetch.wait.max.ms": 50})
        deadline = time.monotonic() + self.settings.connect_timeout_s
        read = 0
        try:
            consumer.assign([TopicPartition(self.topic, p, o) for p, o in starts.items()])
            while read < self.max_records and time.monotonic() < deadline and any(
                    self.positions[p] < high[p] for p in starts):
                for msg in consumer.consume(min(500, self.max_records - read), timeout=0.5):
                    if msg.error() or msg.offset() < self.positions[msg.partition()]:
                        continue
                    tally_headers(self.counts, msg.headers())
                    self.positions[msg.partition()] = msg.offset() + 1
                    read += 1
        finally:
            consumer.close()


# ---- rebuilds -------------------------------------------------------------------------------------

def rebuild_projection(group: str) -> str | None:
    """The projection a consumer group named `cqrs-<projection>-rebuild*` rebuilds; None for other groups."""
    return next((p for p in PROJECTIONS if group.startswith(f"{consumer_group(p)}-rebuild")), None)


def list_groups(settings: Settings, admin: AdminClient) -> list[tuple[str, str]]:
    """(group id, state) of every consumer group Kafka knows."""
    timeout = settings.connect_timeout_s
    found = admin.list_consumer_groups(request_timeout=timeout).result(timeout)
    return sorted((g.group_id, g.state.name.lower() if g.state is not None else "unknown") for g in found.valid)


# ---- the monitor ----------------------------------------------------------------------------------

def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


class PipelineMonitor:
    """The per-process state behind /api/ops/pipeline: lag reader, sample ring, dead-letter tally."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.reader = LagReader(settings, settings.projection_group_suffix)
        self.samples = Samples()
        self.tally = DeadLetterTally(settings, admin=self.reader.admin)
        self.lock = asyncio.Lock()
        self.last: dict[str, Any] | None = None
        self.last_at = float("-inf")

    async def document(self) -> dict[str, Any]:
        """The latest sample as a JSON-ready document, taking a new one if the last is old enough."""
        async with self.lock:
            if self.last is None or time.monotonic() - self.last_at >= self.samples.min_interval_s:
                self.last = await asyncio.to_thread(self.sample)
                self.last_at = time.monotonic()
            return self.last

    def sample(self) -> dict[str, Any]:
        """Read Kafka once (every call bounded) and add a sample; raises ServiceUnavailable or LagError."""
        rows = self.reader.collect(PROJECTIONS)
        try:
            dead = self.tally.refresh()
            rebuilds = self._rebuilds()
        except (KafkaException, concurrent.futures.TimeoutError) as exc:
            raise kafka.unavailable(self.settings, exc) from None
        t = time.time()
        if self.samples.due(t):
            self.samples.add(rows, t)
        return self._document(t, dead, rebuilds)

    def _rebuilds(self) -> list[dict[str, Any]]:
        found = [(g, state, p) for g, state in list_groups(self.settings, self.reader.admin)
                 if (p := rebuild_projection(g))]
        result = []
        for group, state, projection in found:
            rows = self.reader.collect((projection,), group_suffix=group[len(consumer_group(projection)):])
            total = totals(rows)[0]
            result.append({"group": group, "projection": projection, "state": state,
                           "committed": sum(r.committed or 0 for r in rows), "end": sum(r.end for r in rows),
                           "offset_lag": total.offset_lag, "event_time_lag_s": _round(total.event_time_lag_s)})
        return result

    def _document(self, t: float, dead: DeadLetterCounts, rebuilds: list[dict[str, Any]]) -> dict[str, Any]:
        latest = self.samples.latest() or {}
        series = {p: self.samples.series(p) for p in PROJECTIONS}
        times = [round(s.t, 3) for s in series[PROJECTIONS[0]]]
        return {
            "sampled_at": datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "topic_prefix": self.settings.topic_prefix,
            "group_suffix": self.settings.projection_group_suffix,
            "window_s": self.samples.window_s,
            "history_t": times,
            "projections": [self._projection(p, latest[p], series[p]) for p in PROJECTIONS if p in latest],
            "dead_letters": {"topic": dead.topic, "total": dead.total, "pending": dead.pending,
                             "by_projection": dead.by_projection},
            "rebuilds": rebuilds,
        }

    def _projection(self, projection: str, point: Point, series: list[Point]) -> dict[str, Any]:
        return {
            "projection": projection,
            "group": consumer_group(projection, self.settings.projection_group_suffix),
            "committed": point.committed, "end": point.end, "offset_lag": point.offset_lag,
            "event_time_lag_s": _round(point.event_time_lag_s), "throughput_eps": _round(point.throughput_eps),
            "history": {"throughput_eps": [_round(s.throughput_eps) for s in series],
                        "offset_lag": [s.offset_lag for s in series],
                        "event_time_lag_s": [_round(s.event_time_lag_s) for s in series]},
        }
