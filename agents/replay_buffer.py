"""ReplayBuffer: a projection's state kept in memory across the batches of a bulk replay (`cqrs rebuild`).

The live engine loads each batch's states from the read store and writes them back per batch. A replay
of the whole history through that path would cost a read and a replace per event; behind this buffer
the same BatchProcessor (dedup, sequence gate, pure projector) runs against memory, and `flush()` writes
changed states in large bulk writes (inserts for documents the store has never held). Writing only the
states no event touched for a while (`flush(older_than=...)`) writes most aggregates once, after their
last event, instead of once per checkpoint: a replace costs the local read store ~10x an insert.

Guarantees: `flush()` returns only once the states it chose are stored; `dirty` says which are not, so
a caller commits its source offsets below the first unstored event of each of them. Memory is bounded:
states beyond `max_states` are written (if changed) and evicted, least recently used first, and, if
seen again, loaded back from the store.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from agents.engine import Projection


class FlushFailed(RuntimeError):
    """The store rejected some documents of a flush: {aggregate id: reason} in `failures`."""

    def __init__(self, failures: dict[str, str]) -> None:
        sample = next(iter(failures.items()))
        super().__init__(f"the read store rejected {len(failures)} document(s), e.g. {sample[0]}: {sample[1]}")
        self.failures = failures


class ReplayBuffer(Projection):
    """Wraps `inner` (a Projection writing into the version being built) for the engine."""

    def __init__(self, inner: Projection, *, max_states: int = 200_000, flush_chunk: int = 20_000,
                 store_starts_empty: bool = True) -> None:
        self.inner = inner
        self.name = inner.name
        self.sinks = inner.sinks
        self.skips_loading_new_aggregates = inner.skips_loading_new_aggregates
        self.max_states = max_states
        self.flush_chunk = flush_chunk
        self.store_starts_empty = store_starts_empty
        self.states: OrderedDict[str, Any] = OrderedDict()   # least recently touched first
        self.touched: dict[str, int] = {}                    # state -> `clock` when last written
        self.clock = 0                                       # events seen, advanced by the caller
        self.dirty: set[str] = set()
        self.stored: set[str] = set()   # ids the store holds a document for (written or loaded)
        self.loads = 0                   # states read back from the store (evicted, or after a resume)

    async def load(self, aggregate_ids: list[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        missing: list[str] = []
        for agg in aggregate_ids:
            if agg in self.states:
                self.states.move_to_end(agg)
                found[agg] = self.states[agg]
            elif agg in self.stored or not self.store_starts_empty:
                missing.append(agg)
        if missing:
            loaded = await self.inner.load(missing)
            self.loads += len(loaded)
            for agg, state in loaded.items():
                self.states[agg] = state
                self.stored.add(agg)
            found.update(loaded)
        return found

    def last_seq(self, state: Any) -> int:
        return self.inner.last_seq(state)

    async def references(self, events: list[Mapping[str, Any]]) -> Any:
        return await self.inner.references(events)

    def apply(self, state: Any, event: Mapping[str, Any], refs: Any) -> Any:
        return self.inner.apply(state, event, refs)

    async def write(self, changed: dict[str, Any]) -> dict[str, str]:
        for agg, state in changed.items():
            self.states[agg] = state
            self.states.move_to_end(agg)
            self.touched[agg] = self.clock
        self.dirty.update(changed)
        return {}

    def advance(self, events: int) -> None:
        self.clock += events

    @property
    def pending(self) -> int:
        return len(self.dirty)

    async def flush(self, older_than: int | None = None) -> int:
        """Store changed states: all of them, or with `older_than` those no event touched in that many
        events, plus as many of the least recently used as keep memory within `max_states`. Returns how
        many were stored. Raises FlushFailed (nothing is marked stored that was not) when the store
        rejects documents."""
        over = len(self.states) - self.max_states
        chosen: list[str] = []
        for i, agg in enumerate(self.states):   # least recently used first
            cold = older_than is None or self.touched.get(agg, 0) <= self.clock - older_than
            if not cold and i >= over:
                break
            if agg in self.dirty:
                chosen.append(agg)
        written = 0
        for start in range(0, len(chosen), self.flush_chunk):
            chunk = chosen[start:start + self.flush_chunk]
            self.inner.assume_stored({agg for agg in chunk if agg in self.stored})
            failures = await self.inner.write({agg: self.states[agg] for agg in chunk})
            if failures:
                raise FlushFailed(failures)
            for agg in chunk:
                self.states[agg] = self.inner.as_stored(self.states[agg])
            self.stored.update(chunk)
            self.dirty.difference_update(chunk)
            written += len(chunk)
        while len(self.states) > self.max_states and next(iter(self.states)) not in self.dirty:
            agg, _ = self.states.popitem(last=False)
            self.touched.pop(agg, None)
        return written
