"""Dead-letter operations: list what failed and why, and replay dead letters to their source topic.

Replaying is safe at any time: projections skip events they already applied (sequence guard), so a
dead letter replayed twice, or one whose cause was never fixed, cannot corrupt a read model; it
simply comes back to the dead-letter topic with a higher attempt count.
"""
from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from agents.dead_letters import DLQ_TOPIC, dead_letter_topic, describe
from app.settings import Settings
from connectors import kafka

REPLAY_GROUP = "cqrs-dlq-replay"


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @property
    def meta(self) -> dict[str, str]:
        return describe(self.headers)

    def original_headers(self) -> list[tuple[str, bytes]]:
        return [(k, v) for k, v in self.headers if not k.startswith("dlq.")]


def _ensure_topic(settings: Settings) -> None:
    kafka.ensure_topics(settings, [dead_letter_topic(settings)])


def read_dead_letters(settings: Settings, *, group: str | None = None, limit: int | None = 10_000,
                      newest: bool = False) -> Iterator[DeadLetter]:
    """Everything on the dead-letter topic up to its current end (from `group`'s committed position if given),
    at most `limit` letters (None: no cap); with `newest`, each partition's last `limit` letters."""
    _ensure_topic(settings)
    consumer = Consumer({**kafka.base_config(settings), "group.id": group or f"cqrs-dlq-list-{uuid.uuid4()}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        meta = consumer.list_topics(DLQ_TOPIC, timeout=settings.connect_timeout_s).topics[DLQ_TOPIC]
        tps = [TopicPartition(DLQ_TOPIC, p) for p in sorted(meta.partitions)]
        committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)} if group else {}
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10) for tp in tps}
        starts = {p: committed.get(p, -1) if committed.get(p, -1) >= 0 else low for p, (low, _) in ends.items()}
        if newest and limit is not None:
            starts = {p: max(start, ends[p][1] - limit) for p, start in starts.items()}
            limit = limit * len(tps)
        pending = {p for p, (_, high) in ends.items() if starts[p] < high}
        consumer.assign([TopicPartition(DLQ_TOPIC, p, starts[p]) for p in pending])
        seen = 0
        while pending and (limit is None or seen < limit):
            batch = consumer.consume(500, timeout=2)
            if not batch:
                break
            for msg in batch:
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise RuntimeError(f"reading {DLQ_TOPIC}: {msg.error()}")
                yield _letter(msg)
                seen += 1
                if msg.offset() + 1 >= ends[msg.partition()][1]:
                    pending.discard(msg.partition())
    finally:
        consumer.close()


def newest_dead_letters(settings: Settings, *, limit: int, projection: str | None = None,
                        key: bytes | None = None) -> list[DeadLetter]:
    """The `limit` most recent dead letters (of `projection`, with `key`, if given), oldest first."""
    letters = [d for d in read_dead_letters(settings, limit=limit, newest=True)
               if (projection is None or d.meta.get("projection") == projection) and (key is None or d.key == key)]
    letters.sort(key=lambda d: float(d.meta.get("dead_lettered_at", 0)))
    return letters[-limit:]


def _letter(msg: Message) -> DeadLetter:
    return DeadLetter(msg.partition(), msg.offset(), msg.key(), msg.value(), list(msg.headers() or []))


def format_table(letters: list[DeadLetter]) -> str:
    rows = [("PARTITION@OFFSET", "PROJECTION", "REASON", "SOURCE", "KEY", "ATTEMPTS", "AT", "ERROR")]
    for d in letters:
        m = d.meta
        at = dt.datetime.fromtimestamp(float(m.get("dead_lettered_at", 0)), dt.timezone.utc).strftime("%H:%M:%S")
        rows.append((f"{d.partition}@{d.offset}", m.get("projection", "?"), m.get("reason", "?"),
                     f"{m.get('source_topic')}[{m.get('source_partition')}]@{m.get('source_offset')}",
                     (d.key or b"").decode(errors="replace")[:40], m.get("attempts", "?"), at,
                     m.get("error", "")[:80]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows)


def replay(settings: Settings, *, projection: str | None = None, key: bytes | None = None,
           dry_run: bool = False) -> int:
    """Send dead letters back to their source topic (same key, value, original headers). Without `key`:
    every letter not yet replayed, with progress committed per projection filter (REPLAY_GROUP, or
    REPLAY_GROUP-<projection>), so each is replayed once per filter. With `key`: the letters of that
    one aggregate or record key, every time it is asked, leaving the progress of the others alone."""
    producer = Producer({**kafka.base_config(settings), "enable.idempotence": True, "acks": "all",
                         "partitioner": "murmur2_random"})
    count = 0
    last: dict[int, int] = {}
    group = None if key is not None else f"{REPLAY_GROUP}-{projection}" if projection else REPLAY_GROUP
    existing = set(kafka.admin_client(settings).list_topics(timeout=settings.connect_timeout_s).topics)
    gone: dict[str, int] = {}
    for letter in read_dead_letters(settings, group=group, limit=None):
        last[letter.partition] = letter.offset
        meta = letter.meta
        if (projection and meta.get("projection") != projection) or (key is not None and letter.key != key):
            continue
        if meta.get("source_topic") not in existing:
            gone[meta.get("source_topic", "?")] = gone.get(meta.get("source_topic", "?"), 0) + 1
            continue
        if not dry_run:
            producer.produce(meta["source_topic"], key=letter.key, value=letter.value,
                             headers=[*letter.original_headers(), ("dlq.replayed_from", f"{letter.partition}@"
                                                                   f"{letter.offset}".encode())])
        count += 1
    for topic, n in sorted(gone.items()):
        print(f"skipped {n} dead letter(s) whose source topic {topic} no longer exists")
    if dry_run:
        return count
    if producer.flush(30):
        raise RuntimeError("replayed events were not all acknowledged; nothing marked as replayed")
    if last and group is not None:
        committer = Consumer({**kafka.base_config(settings), "group.id": group, "enable.auto.commit": False})
        try:
            committer.commit(offsets=[TopicPartition(DLQ_TOPIC, p, o + 1) for p, o in last.items()],
                             asynchronous=False)
        finally:
            committer.close()
    return count
