"""Changelog-backed progress tables of a projection (Faust), restored from Kafka on restart.

- `<projection>-sequence`: aggregate id -> last applied sequence number.
- `<projection>-recent-events`: aggregate id -> ids of the last few applied events (dedup).

Keys are the aggregate ids as raw bytes and the tables use the producer's partitioner, so each
entry's changelog partition is the partition of the aggregate's events: a worker restores exactly
the state of the partitions it owns. Memory is bounded per aggregate (RECENT_IDS ids); an id that
has left the window is still rejected by the sequence check, and an aggregate missing from the
tables (e.g. after a changelog was compacted away) falls back to the sequence stored in the sink.
"""
from __future__ import annotations

from collections.abc import Sequence

import faust

from agents.engine import RECENT_IDS


class TableProgress:
    def __init__(self, app: faust.App, projection: str, partitions: int) -> None:
        self.sequence = app.Table(
            f"{projection}-sequence", default=int, partitions=partitions, use_partitioner=True,
            schema=faust.Schema(key_type=str, value_type=int, key_serializer="raw", value_serializer="raw"),
            help="last applied sequence number per aggregate")
        self.recent_ids = app.Table(
            f"{projection}-recent-events", default=list, partitions=partitions, use_partitioner=True,
            schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
            help="ids of the last applied events per aggregate")

    def last(self, aggregate_id: str) -> int:
        return self.sequence.get(aggregate_id) or 0

    def recent(self, aggregate_id: str) -> Sequence[str]:
        return self.recent_ids.get(aggregate_id) or ()

    def record(self, aggregate_id: str, seq: int, event_ids: Sequence[str]) -> None:
        self.sequence[aggregate_id] = seq
        self.recent_ids[aggregate_id] = [*self.recent(aggregate_id), *event_ids][-RECENT_IDS:]
