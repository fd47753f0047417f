"""SequenceGate: per-aggregate ordering guard shared by every projection (live and rebuild).

Guarantee: for each aggregate, events reach the projector in strictly increasing sequence order,
each at most once. seq <= last applied -> skipped as a duplicate/stale redelivery; seq == last + 1
-> applied; seq > last + 1 (a gap) -> held until the missing events arrive, for at most
`hold_seconds`, and at most `max_held` events in all; past either bound the held events are
released to the caller as `expired` (to be reported and dead-lettered), never applied out of order.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Admitted:
    ready: dict[str, list[Mapping[str, Any]]] = field(default_factory=dict)
    duplicates: list[Mapping[str, Any]] = field(default_factory=list)
    expired: list[Mapping[str, Any]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.ready.values())


class SequenceGate:
    def __init__(self, hold_seconds: float = 30.0, max_held: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.hold_seconds = hold_seconds
        self.max_held = max_held
        self.clock = clock
        self._held: dict[str, dict[int, tuple[float, Mapping[str, Any]]]] = {}

    @property
    def held(self) -> int:
        return sum(len(v) for v in self._held.values())

    def held_events(self) -> list[Any]:
        """The events held now, waiting for a missing sequence number."""
        return [event for held in self._held.values() for _, event in held.values()]

    def admit(self, events: Iterable[Mapping[str, Any]], last_applied: Callable[[str], int]) -> Admitted:
        """Split a batch (in partition order) into per-aggregate runs ready to apply, duplicates and
        expired gaps. `last_applied(aggregate_id)` is the durable last sequence (0 if none)."""
        out = Admitted()
        now = self.clock()
        touched: dict[str, int] = {}
        for event in events:
            agg, seq = event["aggregate_id"], event["sequence_number"]
            last = touched.get(agg)
            if last is None:
                last = self._settle(agg, last_applied(agg), out)
            if seq <= last or seq in self._held.get(agg, {}):
                out.duplicates.append(event)
                touched[agg] = last
                continue
            if seq > last + 1:
                self._held.setdefault(agg, {})[seq] = (now, event)
                touched[agg] = last
                continue
            run = out.ready.setdefault(agg, [])
            run.append(event)
            last = seq
            held = self._held.get(agg)
            while held and last + 1 in held:
                run.append(held.pop(last + 1)[1])
                last += 1
            if held is not None and not held:
                del self._held[agg]
            touched[agg] = last
        for agg in [a for a in self._held if a not in touched]:
            self._settle(agg, last_applied(agg), out, release=False)
        out.expired.extend(self._expire(now))
        return out

    def _settle(self, agg: str, last: int, out: Admitted, release: bool = True) -> int:
        """Reconcile `agg`'s held events with its durable last sequence, which may have moved since they
        were held: those at or below it are duplicates and, with `release`, those now next in line are
        ready. Only aggregates in the batch release (callers load state for those alone). Returns the
        sequence the aggregate is at after them."""
        held = self._held.get(agg)
        if not held:
            return last
        for seq in [s for s in held if s <= last]:
            out.duplicates.append(held.pop(seq)[1])
        if release and last + 1 in held:
            run = out.ready.setdefault(agg, [])
            while last + 1 in held:
                run.append(held.pop(last + 1)[1])
                last += 1
        if not held:
            del self._held[agg]
        return last

    def _expire(self, now: float) -> list[Mapping[str, Any]]:
        expired: list[tuple[float, Mapping[str, Any]]] = []
        for agg in list(self._held):
            held = self._held[agg]
            oldest = min(t for t, _ in held.values())
            if now - oldest >= self.hold_seconds:
                expired.extend(held.values())
                del self._held[agg]
        overflow = self.held - self.max_held
        if overflow > 0:
            everything = sorted(((t, agg, seq) for agg, h in self._held.items() for seq, (t, _) in h.items()))
            for _, agg, seq in everything[:overflow]:
                expired.append(self._held[agg].pop(seq))
                if not self._held[agg]:
                    del self._held[agg]
        return [e for _, e in sorted(expired, key=lambda te: te[0])]
