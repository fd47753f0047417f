"""Changelog-backed progress tables of a projection (Faust), restored from Kafka on restart.

- `<projection>-sequence`: aggregate id -> last applied sequence number.
- `<projection>-recent-events`: aggregate id -> ids of the last few applied events (dedup).

Each entry is written to the changelog partition its aggregate's events come from, so a worker
restores exactly the state of the partitions it owns. Memory is bounded per aggregate (RECENT_IDS ids); an id that
has left the window is still rejected by the sequence check, and an aggregate missing from the
tables (e.g. after a changelog was compacted away) falls back to the sequence stored in the sink.
"""
from __future__ import annotations

from collections.abc import Sequence

import faust

RECENT_IDS = 8   # event ids kept per aggregate for dedup; older ones are rejected by the sequence check


class SourcePartitionedTable(faust.Table):
    """A table whose changelog partition is named per write: the source partition of the aggregate."""

    next_partition: int | None = None

    def partition_for_key(self, key):  # noqa: ANN001 - Faust's signature
        if self.next_partition is None:
            raise RuntimeError(f"{self.name}: write without a source partition")
        return self.next_partition


class TableProgress:
    def __init__(self, app: faust.App, projection: str, partitions: int) -> None:
        def table(name: str, default, schema: faust.Schema, help_text: str) -> SourcePartitionedTable:
            return app.tables.add(SourcePartitionedTable(app, name=name, default=default, partitions=partitions,
                                                         schema=schema, help=help_text, beacon=app.tables.beacon))

        self.sequence = table(f"{projection}-sequence", int,
                              faust.Schema(key_type=str, value_type=int, key_serializer="raw", value_serializer="raw"),
                              "last applied sequence number per aggregate")
        self.recent_ids = table(f"{projection}-recent-events", list,
                                faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
                                "ids of the last applied events per aggregate")

    def last(self, aggregate_id: str) -> int:
        return self.sequence.get(aggregate_id) or 0

    def recent(self, aggregate_id: str) -> Sequence[str]:
        return self.recent_ids.get(aggregate_id) or ()

    def record(self, aggregate_id: str, seq: int, event_ids: Sequence[str], partition: int) -> None:
        self.sequence.next_partition = self.recent_ids.next_partition = partition
        self.sequence[aggregate_id] = seq
        self.recent_ids[aggregate_id] = [*self.recent(aggregate_id), *event_ids][-RECENT_IDS:]
