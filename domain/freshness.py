"""How fresh a read model's answer is, from what the pipeline reports about each partition.

Two reports:
- the outbox relay raises the *published head* of every partition it wrote (the next offset), in the
  statement that marks the rows published (PostgreSQL `stream_heads`, followed by the query API);
- each projection worker, after each batch and on every tick, writes what it has *applied* of each
  partition it owns into Redis (`progress:<consumer group>`, field `<topic>:<partition>` -> a
  PartitionReport), so that an order's freshness is one HGET.

A partition is **current** when the projection had applied everything the partition was known to hold
(the larger of the relay's head and the head the worker saw) when the read started. Otherwise it is
**lagging**, and `lag_s` bounds how old the oldest event the view may miss is: the time since the worker
last reported being caught up, or since the last event it applied while behind. A partition nobody has
reported anything for holds nothing known, and is current.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import Enum


class State(str, Enum):
    current = "current"
    lagging = "lagging"
    write_model = "write-model"


DESCRIPTION = (
    "`current`: the view had applied every event its partitions held when the read started. "
    "`lagging`: the view may miss events; `lag_s` bounds the age of the oldest one it may miss (null: unknown, "
    "the projection has not reported yet). `write-model`: read from the write model, because the view lagged "
    "more than FRESHNESS_MAX_LAG_S (or did not have the order yet, or could not show the version asked for).")


def progress_key(consumer_group: str) -> str:
    return f"progress:{consumer_group}"


def progress_field(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


@dataclass(frozen=True)
class PartitionReport:
    """What a worker had applied of one partition at wall time `at` (seconds since the epoch)."""

    applied: int  # the next offset to apply: every offset below it is reflected in the view
    head: int  # the partition's end offset as the worker's consumer last saw it
    at: float
    last_event_at: float | None = None  # Kafka timestamp (s) of the last event applied

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, raw: str | bytes | None) -> PartitionReport | None:
        if raw is None:
            return None
        try:
            return cls(**json.loads(raw))
        except (TypeError, ValueError):
            return None  # a report this version cannot read counts as none


@dataclass(frozen=True)
class Freshness:
    state: State
    lag_s: float | None = None

    def fields(self) -> dict[str, object]:
        """The answer's `freshness` and `lag_s` fields."""
        return {"freshness": self.state.value,
                "lag_s": None if self.lag_s is None else round(self.lag_s, 3)}

    def within(self, max_lag_s: float) -> bool:
        """Whether an answer from the view is acceptable where at most `max_lag_s` of lag is."""
        return self.state is State.current or (self.lag_s is not None and self.lag_s <= max_lag_s)


CURRENT = Freshness(State.current)
WRITE_MODEL = Freshness(State.write_model)


def partition_freshness(report: PartitionReport | None, published_head: int | None, now: float) -> Freshness:
    """The freshness of one partition of a projection at wall time `now`."""
    head = max(published_head or 0, report.head if report else 0)
    applied = report.applied if report else 0
    if applied >= head:
        return CURRENT
    if report is None:
        return Freshness(State.lagging, None)
    if report.applied >= report.head:  # caught up when it reported: what it misses came later
        since = report.at
    elif report.last_event_at is not None:
        since = min(report.last_event_at, report.at)
    else:
        return Freshness(State.lagging, None)
    return Freshness(State.lagging, max(0.0, now - since))


def worst(parts: list[Freshness]) -> Freshness:
    """The freshness of an answer drawn from several partitions: the stalest of them."""
    lagging = [p for p in parts if p.state is not State.current]
    if not lagging:
        return CURRENT
    if any(p.lag_s is None for p in lagging):
        return Freshness(State.lagging, None)
    return Freshness(State.lagging, max(p.lag_s for p in lagging if p.lag_s is not None))
