"""The freshness of an answer (domain/freshness.py): the workers' progress reports, one Redis read, against
the published heads the query API follows in process (app/queries/heads.py).

An order's freshness is its partition's (the producers' murmur2 partitioner finds it); a list's or a
search's is the stalest partition of the projection it reads. When Redis cannot be asked within the
cache's share of the budget, nothing is known: the answer is `lagging` with an unknown lag, and a
single order is read from the write model.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agents.projections import consumer_group, source_topics
from app.queries.heads import HeadsFollower
from app.queries.stores import Deadline, Stores
from app.settings import Settings
from domain.freshness import Freshness, PartitionReport, State, partition_freshness, progress_field, progress_key, worst
from domain.partitioning import partition_for

UNKNOWN = Freshness(State.lagging, None)


class FreshnessReader:
    def __init__(self, settings: Settings, heads: HeadsFollower, clock: Callable[[], float]) -> None:
        self.heads = heads
        self.prefix = settings.topic_prefix
        self.suffix = settings.projection_group_suffix
        self.partitions = settings.topic_partitions
        self.max_lag_s = settings.freshness_max_lag_s
        self.clock = clock

    @property
    def order_views_channel(self) -> str:
        """Where order-views reports (a Redis hash) and announces (a channel of the same name) its progress."""
        return progress_key(consumer_group("order-views", self.suffix))

    def _order_topic_partition(self, order_id: str) -> tuple[str, int]:
        return source_topics("order-views", self.prefix)[0], partition_for(order_id, self.partitions)

    def order_partition(self, order_id: str) -> tuple[str, str]:
        """The (Redis key and channel, field) under which order-views reports the order's partition."""
        return self.order_views_channel, progress_field(*self._order_topic_partition(order_id))

    async def of_order(self, s: Stores, deadline: Deadline, order_id: str) -> Freshness:
        topic, partition = self._order_topic_partition(order_id)

        async def read() -> list[Any]:  # [report or None]; None itself: Redis did not answer
            return [await s.redis.hget(self.order_views_channel, progress_field(topic, partition))]

        got = await s.cache_call(deadline, read)
        if got is None:
            return UNKNOWN
        return partition_freshness(PartitionReport.loads(got[0]), self.heads.head(topic, partition), self.clock())

    async def of_projection(self, s: Stores, deadline: Deadline, projection: str) -> Freshness:
        topics = source_topics(projection, self.prefix)
        key = progress_key(consumer_group(projection, self.suffix))

        reports = await s.cache_call(deadline, lambda: s.redis.hgetall(key))
        if reports is None:
            return UNKNOWN
        now = self.clock()
        parts = []
        for topic in topics:
            heads = self.heads.of_topic(topic)
            partitions = set(heads) | {int(f.rsplit(":", 1)[1]) for f in reports if f.rsplit(":", 1)[0] == topic}
            parts.extend(partition_freshness(PartitionReport.loads(reports.get(progress_field(topic, p))),
                                             heads.get(p), now) for p in partitions)
        return worst(parts)
