"""`cqrs lag`: how far each projection's consumer group is behind its source topics.

Per projection and source partition:

- *committed*: the next offset the group will process (None while it has committed nothing);
- *end*: the offset the next record appended to the partition will get;
- *offset lag*: records still to process, ``end - max(committed, earliest)``; a group that has
  committed nothing starts at the earliest offset still held, and so does one whose committed
  offset retention has deleted;
- *event-time lag*: how stale the read model is, in seconds. Zero when the partition is caught up
  (offset lag 0): the read model reflects every event there is, however old the last one. Otherwise
  ``now - occurred_at`` of the oldest unprocessed record (the one at the group's next offset): the
  read model has been missing that event for that long, and it grows until the worker reaches it.
  None when that record could not be read within the timeout.

Building rows, totals and output is pure (`build_row`, `totals`, `seek_rounds`, `format_table`,
`to_json`); reading offsets and records (`LagReader.collect`) is the only I/O. Every Kafka and registry
call is bounded by ``connect_timeout_s``; reading the oldest unprocessed records takes one bounded round
per distinct offset wanted of a partition (two at most today: order-views and sales-stats share
order-events), so a refresh never hangs.

Unreachable or slow. When no broker answers the metadata request (connection refused, nothing
answering), Kafka is *unreachable*: said at once, exit 2. When the cluster answered metadata but a
later request (offsets, a group's committed offsets) timed out or failed retriably, Kafka is up but
*slow* (connectors.kafka `after_metadata` → `KafkaSlow`): the command tries again (`retry_slow`: at
most 3 tries, none started later than 3 × connect_timeout_s after the first), then says
`kafka slow: … after N attempts`, exit 3.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TextIO

from confluent_kafka import Consumer, KafkaException, TopicPartition

from app.settings import Settings
from agents.projections import PROJECTIONS, consumer_group, source_topics
from connectors import ServiceUnavailable, kafka, redact_url, registry
from connectors.kafka import KafkaSlow, after_metadata, retry_slow
from schemas.codec import DecodeError, EventCodec, register_codecs

DEFAULT_WATCH_S = 2.0
CLEAR_SCREEN = "\033[H\033[2J"
EXIT_CANNOT_ANSWER = 2  # invalid request, missing topics, Kafka or the schema registry unreachable
EXIT_SLOW = 3  # Kafka answered metadata, but a later request not in time, on every try


class LagError(RuntimeError):
    """A request `cqrs lag` cannot answer (unknown projection, missing topic); the message is one line."""


@dataclass(frozen=True)
class PartitionOffsets:
    """What Kafka says about one source partition for one consumer group."""

    topic: str
    partition: int
    committed: int | None
    earliest: int
    end: int

    @property
    def next_offset(self) -> int:
        """The offset the group processes next: its committed offset, or the earliest one still held."""
        return self.earliest if self.committed is None else max(self.committed, self.earliest)

    @property
    def behind(self) -> bool:
        return self.end > self.next_offset


@dataclass(frozen=True)
class LagRow:
    projection: str
    group: str
    topic: str
    partition: int
    committed: int | None
    end: int
    offset_lag: int
    event_time_lag_s: float | None


@dataclass(frozen=True)
class LagTotal:
    """One projection summed up: offset lag over its partitions, event-time lag of its stalest one
    (None when any lagging partition's could not be read)."""

    projection: str
    group: str
    partitions: int
    offset_lag: int
    event_time_lag_s: float | None


def select_projections(projection: str | None) -> tuple[str, ...]:
    """Every projection, or just the one asked for; an unknown name raises LagError naming the valid ones."""
    if projection is None:
        return PROJECTIONS
    if projection not in PROJECTIONS:
        raise LagError(f"unknown projection {projection!r}; valid: {', '.join(PROJECTIONS)}")
    return (projection,)


def event_time_lag(offsets: PartitionOffsets, oldest_unprocessed_at: datetime | None, now: datetime) -> float | None:
    """0 when caught up; else seconds since the oldest unprocessed event occurred (never negative,
    so clock skew between producer and operator does not show as negative staleness)."""
    if not offsets.behind:
        return 0.0
    if oldest_unprocessed_at is None:
        return None
    return max(0.0, (now - oldest_unprocessed_at).total_seconds())


def seek_rounds(targets: Iterable[tuple[str, int, int]]) -> list[list[tuple[str, int, int]]]:
    """Split (topic, partition, offset) targets into rounds that each hold a partition at most once
    (projections sharing a topic want different offsets of one partition); offsets ascend across rounds."""
    rounds: list[list[tuple[str, int, int]]] = []
    depth: dict[tuple[str, int], int] = {}
    for topic, partition, offset in sorted(set(targets)):
        level = depth.get((topic, partition), 0)
        depth[(topic, partition)] = level + 1
        if level == len(rounds):
            rounds.append([])
        rounds[level].append((topic, partition, offset))
    return rounds


def build_row(projection: str, group: str, offsets: PartitionOffsets, oldest_unprocessed_at: datetime | None,
              now: datetime) -> LagRow:
    return LagRow(projection, group, offsets.topic, offsets.partition, offsets.committed, offsets.end,
                  max(0, offsets.end - offsets.next_offset),
                  event_time_lag(offsets, oldest_unprocessed_at, now))


def totals(rows: Iterable[LagRow]) -> list[LagTotal]:
    """One total per projection, in the order the projections first appear in `rows`."""
    grouped: dict[str, list[LagRow]] = {}
    for row in rows:
        grouped.setdefault(row.projection, []).append(row)
    result = []
    for projection, members in grouped.items():
        lags = [r.event_time_lag_s for r in members]
        worst = None if any(lag is None for lag in lags) else max(lags, default=0.0)
        result.append(LagTotal(projection, members[0].group, len(members), sum(r.offset_lag for r in members), worst))
    return result


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}"


def format_table(rows: list[LagRow]) -> str:
    """Aligned plain text: a line per partition, then a total line per projection (offset lag summed,
    event-time lag of its stalest partition)."""
    header = ("PROJECTION", "TOPIC", "PARTITION", "COMMITTED", "END", "OFFSET LAG", "EVENT-TIME LAG S")
    lines: list[tuple[str, ...]] = [header]
    by_projection = {t.projection: t for t in totals(rows)}
    for projection, total in by_projection.items():
        for r in (r for r in rows if r.projection == projection):
            lines.append((r.projection, r.topic, str(r.partition), "-" if r.committed is None else str(r.committed),
                          str(r.end), str(r.offset_lag), _seconds(r.event_time_lag_s)))
        lines.append((f"{projection} total", f"group {total.group}", f"{total.partitions} partitions", "", "",
                      str(total.offset_lag), _seconds(total.event_time_lag_s)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(_align(line, widths) for line in lines)


def _align(cells: tuple[str, ...], widths: list[int]) -> str:
    """Names left-aligned, numbers (from the third column on) right-aligned."""
    return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()


def to_json(rows: list[LagRow]) -> str:
    """One JSON document: {"rows": [...], "totals": [...]}; unknown values are null."""
    return json.dumps({"rows": [asdict(r) for r in rows], "totals": [asdict(t) for t in totals(rows)]})


# ---- I/O ------------------------------------------------------------------------------------------

class LagReader:
    """Reads offsets and oldest unprocessed records; keeps its Kafka admin client and the event codecs
    between refreshes."""

    def __init__(self, settings: Settings, group_suffix: str) -> None:
        self.settings = settings
        self.group_suffix = group_suffix
        self.admin = kafka.admin_client(settings)
        self._codecs: dict[str, EventCodec] = {}

    def collect(self, projections: Iterable[str], now: Callable[[], datetime] | None = None,
                group_suffix: str | None = None) -> list[LagRow]:
        """Every (projection, partition) row of the groups with `group_suffix` (default: the reader's);
        raises ServiceUnavailable when Kafka (no metadata) or the registry does not answer within the
        connect timeout, KafkaSlow when Kafka answered metadata but not a later request, LagError when a
        source topic does not exist. One try: `retry_slow` tries again."""
        projections = tuple(projections)
        suffix = self.group_suffix if group_suffix is None else group_suffix
        topics = {t for p in projections for t in source_topics(p, self.settings.topic_prefix)}
        try:
            partitions = self._partitions(topics)
        except KafkaException as exc:  # no broker answered metadata
            raise kafka.unavailable(self.settings, exc) from None
        offsets = self._offsets(projections, partitions, suffix)
        behind = {(o.topic, o.partition, o.next_offset) for per in offsets.values() for o in per if o.behind}
        with self._request("reading the oldest unprocessed records"):
            occurred = self._oldest_unprocessed(behind)
        at = now() if now else datetime.now(timezone.utc)
        return [build_row(p, consumer_group(p, suffix), o,
                          occurred.get((o.topic, o.partition, o.next_offset)), at)
                for p in projections for o in offsets[p]]

    @contextmanager
    def _request(self, request: str) -> Iterator[None]:
        """A request made once the cluster answered metadata: its failure is classified (after_metadata)."""
        try:
            yield
        except (KafkaException, TimeoutError) as exc:
            raise after_metadata(self.settings, request, exc) from None

    def _partitions(self, topics: set[str]) -> dict[str, list[int]]:
        meta = self.admin.list_topics(timeout=self.settings.connect_timeout_s)
        missing = sorted(t for t in topics if t not in meta.topics or meta.topics[t].error is not None)
        if missing:
            raise LagError(f"missing topic(s) {', '.join(missing)}; run `cqrs setup` with this TOPIC_PREFIX")
        return {t: sorted(meta.topics[t].partitions) for t in topics}

    def _offsets(self, projections: tuple[str, ...], partitions: dict[str, list[int]],
                 suffix: str) -> dict[str, list[PartitionOffsets]]:
        timeout = self.settings.connect_timeout_s
        tps = [(t, p) for t, ps in sorted(partitions.items()) for p in ps]
        with self._request("listing earliest offsets"):
            earliest = kafka.earliest_offsets(self.settings, tps, timeout, self.admin)
        with self._request("listing end offsets"):
            end = kafka.end_offsets(self.settings, tps, timeout, self.admin)
        result = {}
        for projection in projections:
            own = [(t, p) for t in source_topics(projection, self.settings.topic_prefix) for p in partitions[t]]
            group = consumer_group(projection, suffix)
            with self._request(f"reading the committed offsets of {group}"):
                committed = kafka.committed_offsets(self.settings, group, own, timeout, self.admin)
            result[projection] = [PartitionOffsets(t, p, committed.get((t, p)), earliest[(t, p)], end[(t, p)])
                                  for t, p in own]
        return result

    def _oldest_unprocessed(self, wanted: set[tuple[str, int, int]]) -> dict[tuple[str, int, int], datetime]:
        """occurred_at of the record at each (topic, partition, offset) (or of the first one after it,
        should that offset hold none); records not read before the deadline or not decodable are left out."""
        if not wanted:
            return {}
        codecs = self._codecs_for({t for t, _, _ in wanted})
        found: dict[tuple[str, int, int], datetime] = {}
        for target, value in self._records_at(wanted):
            try:
                found[target] = codecs[target[0]].decode(value)["occurred_at"]
            except (DecodeError, KeyError):
                continue
        return found

    def _records_at(self, wanted: set[tuple[str, int, int]]) -> Iterator[tuple[tuple[str, int, int], bytes]]:
        """(target, value) of the first record at or after each target offset, one short-lived consumer
        reading a round per distinct offset of a partition, each round bounded by the connect timeout."""
        consumer = Consumer({**kafka.base_config(self.settings), "group.id": f"cqrs-lag-{uuid.uuid4()}",
                             "enable.auto.commit": False, "enable.partition.eof": False,
                             "fetch.wait.max.ms": 50, "max.partition.fetch.bytes": 65536})
        try:
            for targets in seek_rounds(wanted):
                yield from self._read_round(consumer, targets)
        finally:
            consumer.close()

    def _read_round(self, consumer: Consumer,
                    targets: list[tuple[str, int, int]]) -> Iterator[tuple[tuple[str, int, int], bytes]]:
        pending = {(t, p): o for t, p, o in targets}
        consumer.assign([TopicPartition(t, p, o) for t, p, o in targets])
        deadline = time.monotonic() + self.settings.connect_timeout_s
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=min(0.5, self.settings.connect_timeout_s)):
                key = (msg.topic(), msg.partition())
                if msg.error() or key not in pending or msg.offset() < pending[key]:
                    continue
                yield (*key, pending.pop(key)), msg.value()
                consumer.pause([TopicPartition(*key)])
        assigned = [TopicPartition(t, p) for t, p, _ in targets]
        consumer.resume(assigned)
        consumer.unassign()

    def _codecs_for(self, topics: set[str]) -> dict[str, EventCodec]:
        """The codec of each topic (registering its schema is a no-op once any process has)."""
        prefix = self.settings.topic_prefix
        missing = tuple(sorted(t[len(prefix):] for t in topics if t not in self._codecs))
        if missing:
            try:
                self._codecs.update(register_codecs(registry.registry_client(self.settings), missing, prefix))
            except Exception as exc:  # transport and registry errors alike: the schemas cannot be had
                raise ServiceUnavailable(registry.SERVICE, redact_url(self.settings.schema_registry_url),
                                         f"{type(exc).__name__}: {exc}") from None
        return self._codecs


# ---- command --------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--projection", help=f"only this projection ({', '.join(PROJECTIONS)})")
    parser.add_argument("--watch", nargs="?", type=float, const=DEFAULT_WATCH_S, default=None, metavar="SECONDS",
                        help=f"refresh every SECONDS (default {DEFAULT_WATCH_S:g}) until Ctrl-C")
    parser.add_argument("--json", action="store_true", help="print JSON (rows and totals) and nothing else")
    parser.add_argument("--group-suffix", default=None,
                        help="inspect the groups cqrs-<projection><SUFFIX> (default: PROJECTION_GROUP_SUFFIX); "
                             "write --group-suffix=-x for a suffix starting with a dash")


def render(rows: list[LagRow], as_json: bool) -> str:
    return to_json(rows) if as_json else format_table(rows)


def run(args: argparse.Namespace, settings: Settings, out: TextIO = sys.stdout) -> int:
    """Print the lag once, or every `--watch` seconds until interrupted. Errors propagate on the first
    refresh; while watching, a later failure is shown in place of the table and retried."""
    projections = select_projections(args.projection)
    if args.watch is not None and args.watch <= 0:
        raise LagError("--watch needs a positive number of seconds")
    suffix = settings.projection_group_suffix if args.group_suffix is None else args.group_suffix
    reader = LagReader(settings, suffix)

    def collect() -> list[LagRow]:
        return retry_slow(lambda: reader.collect(projections), settings.connect_timeout_s)

    if args.watch is None:
        print(render(collect(), args.json), file=out)
        return 0
    return _watch(collect, args.watch, args.json, out)


def _watch(collect: Callable[[], list[LagRow]], interval: float, as_json: bool, out: TextIO) -> int:
    clear = out.isatty() and not as_json
    first = True
    try:
        while True:
            try:
                text = render(collect(), as_json)
            except (ServiceUnavailable, LagError) as exc:
                if first:
                    raise
                text = json.dumps({"error": str(exc)}) if as_json else f"cqrs lag: {exc}"
            first = False
            stamp = datetime.now().strftime("%H:%M:%S")
            if clear:
                out.write(CLEAR_SCREEN)
            if not as_json:
                print(f"{stamp}  every {interval:g}s, Ctrl-C to stop", file=out)
            print(text, file=out)
            if not as_json and not clear:
                print(file=out)
            out.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def main(args: argparse.Namespace, settings: Settings) -> int:
    """The `cqrs lag` entry point: a failure ends with one line on stderr and exit 3 when Kafka is only
    slow (try later), 2 when the command cannot answer (bad request, missing topics, unreachable)."""
    try:
        return run(args, settings)
    except (LagError, ServiceUnavailable) as exc:
        print(f"cqrs lag: {exc}", file=sys.stderr)
        return exit_code(exc)


def exit_code(exc: LagError | ServiceUnavailable) -> int:
    return EXIT_SLOW if isinstance(exc, KafkaSlow) else EXIT_CANNOT_ANSWER
