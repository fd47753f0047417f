"""Which version of a rebuildable read model serves, and the switch fence between versions.

One document per projection in the READ_MODEL_VERSIONS collection of the read database, written only by
`cqrs rebuild` (one at a time per projection, under a write-model advisory lock), read by the live
workers before every batch and by the query API (cached for READ_CACHE_S):

    {_id: <projection>, serving: <version>, fence: {id, until (epoch s)} | null,
     building: {version, group, started_at} | null, retired: [{version, drop_after (epoch s)}]}

No document means version 1 serves and nothing is fenced.

The switch fence: while a rebuild moves reads and live writes from version N to N+1, live workers hold
their next batch, so the rebuild's last drain and the live worker never write the same documents at
once (the local read store does not serialise concurrent updates of one document). A fence carries
its own expiry: a rebuild that dies mid-switch holds the live projection for at most FENCE_S.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from domain.read_models import (READ_MODEL_VERSIONS, OrderCollections, order_collections, product_stats_collection,
                             sales_prefix)

FENCE_S = 10.0
FENCE_POLL_S = 0.05
READ_CACHE_S = 1.0


@dataclass(frozen=True)
class ServingRecord:
    projection: str
    serving: int = 1
    fence_id: str | None = None
    fence_until: float = 0.0
    building: dict[str, Any] | None = None
    retired: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @classmethod
    def from_document(cls, projection: str, doc: dict[str, Any] | None) -> "ServingRecord":
        if not doc:
            return cls(projection)
        fence = doc.get("fence") or {}
        return cls(projection, int(doc.get("serving", 1)), fence.get("id"), float(fence.get("until", 0.0)),
                   doc.get("building"), tuple(doc.get("retired") or ()))

    def fenced(self, now: float) -> bool:
        """Live writes of this projection must wait: a switch is in progress and its fence has not expired."""
        return self.fence_id is not None and now < self.fence_until

    def next_version(self, existing: set[int] = frozenset()) -> int:
        """The version a new rebuild writes: above the serving one and above any left behind (retired or
        abandoned), so a rebuild never writes into a version something may still read."""
        taken = {self.serving, *existing, *(int(r["version"]) for r in self.retired)}
        if self.building:
            taken.add(int(self.building["version"]))
        return max(taken) + 1

    @property
    def order_collections(self) -> OrderCollections:
        return order_collections(self.serving)

    @property
    def sales_prefix(self) -> str:
        return sales_prefix(self.serving)

    @property
    def product_stats(self) -> str:
        return product_stats_collection(self.serving)


async def current(collection, projection: str) -> ServingRecord:
    """The record as stored now (an async pymongo collection)."""
    return ServingRecord.from_document(projection, await collection.find_one({"_id": projection}))


async def wait_unfenced(collection, projection: str, clock: Callable[[], float] = time.time) -> ServingRecord:
    """The record once no switch fence holds the projection's live writes. Bounded by the fence's expiry."""
    while True:
        record = await current(collection, projection)
        if not record.fenced(clock()):
            return record
        await asyncio.sleep(min(FENCE_POLL_S, max(0.0, record.fence_until - clock())))


class ServingCache:
    """The serving record for readers (the query API): read at most once per READ_CACHE_S, so a switch is
    seen by every reader within that time, while the retired version still exists (grace period). While
    the read store cannot be asked, the last record read keeps being used."""

    def __init__(self, db, clock: Callable[[], float] = time.monotonic) -> None:
        self.collection = db[READ_MODEL_VERSIONS]
        self.clock = clock
        self._cached: dict[str, tuple[float, ServingRecord]] = {}

    async def get(self, projection: str) -> ServingRecord:
        hit = self._cached.get(projection)
        now = self.clock()
        if hit is not None and now - hit[0] < READ_CACHE_S:
            return hit[1]
        try:
            record = await current(self.collection, projection)
        except Exception:
            if hit is not None:  # the read store is away: keep serving what was serving
                return hit[1]
            raise
        self._cached[projection] = (now, record)
        return record
