"""SequenceGate: per-aggregate ordering, duplicates, held gaps, expiry and overflow."""
from __future__ import annotations

import random
from typing import Any

import pytest

from agents.gate import Admitted, SequenceGate


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ev(agg: str, seq: int, tag: str = "") -> dict[str, Any]:
    return {"event_id": f"{agg}-{seq}{tag}", "aggregate_id": agg, "sequence_number": seq}


def ids(events) -> list[str]:
    return [e["event_id"] for e in events]


def runs(out: Admitted) -> dict[str, list[int]]:
    return {agg: [e["sequence_number"] for e in run] for agg, run in out.ready.items()}


class Projection:
    """The durable side: last applied sequence per aggregate, advanced by applying ready runs."""

    def __init__(self, **last: int) -> None:
        self.last: dict[str, int] = dict(last)
        self.applied: dict[str, list[int]] = {}

    def __call__(self, agg: str) -> int:
        return self.last.get(agg, 0)

    def apply(self, out: Admitted) -> Admitted:
        for agg, run in out.ready.items():
            for event in run:
                assert event["sequence_number"] == self(agg) + 1, "out of order or repeated"
                self.last[agg] = event["sequence_number"]
                self.applied.setdefault(agg, []).append(event["sequence_number"])
        return out


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def gate(clock: FakeClock) -> SequenceGate:
    return SequenceGate(hold_seconds=30, max_held=100, clock=clock)


# --- in order and duplicates ---------------------------------------------------------------------------------------

def test_in_order_events_are_all_ready(gate):
    db = Projection()
    out = db.apply(gate.admit([ev("A", 1), ev("A", 2), ev("A", 3)], db))
    assert runs(out) == {"A": [1, 2, 3]}
    assert out.duplicates == [] and out.expired == [] and out.count == 3
    assert gate.held == 0


def test_in_order_events_continue_from_the_durable_last_sequence(gate):
    db = Projection(A=5)
    out = gate.admit([ev("A", 6), ev("A", 7)], db)
    assert runs(out) == {"A": [6, 7]} and gate.held == 0


def test_ready_runs_keep_the_original_event_objects(gate):
    events = [ev("A", 1), ev("A", 2)]
    out = gate.admit(events, Projection())
    assert out.ready["A"][0] is events[0] and out.ready["A"][1] is events[1]


def test_empty_batch_admits_nothing(gate):
    out = gate.admit([], Projection())
    assert out.ready == {} and out.duplicates == [] and out.expired == [] and out.count == 0


def test_events_at_or_below_last_applied_are_duplicates(gate):
    db = Projection(A=3)
    out = gate.admit([ev("A", 2), ev("A", 3), ev("A", 4), ev("A", 4, "again"), ev("A", 1)], db)
    assert runs(out) == {"A": [4]}
    assert ids(out.duplicates) == ["A-2", "A-3", "A-4again", "A-1"]
    assert gate.held == 0


def test_redelivered_batch_after_applying_is_all_duplicates(gate):
    db = Projection()
    batch = [ev("A", 1), ev("A", 2)]
    db.apply(gate.admit(batch, db))
    out = gate.admit(batch, db)
    assert out.ready == {} and ids(out.duplicates) == ["A-1", "A-2"]


def test_a_second_copy_of_a_held_event_is_a_duplicate(gate):
    db = Projection(A=1)
    out = gate.admit([ev("A", 3), ev("A", 3, "again")], db)
    assert out.ready == {} and ids(out.duplicates) == ["A-3again"] and gate.held == 1
    out = gate.admit([ev("A", 3, "third")], db)
    assert ids(out.duplicates) == ["A-3third"] and gate.held == 1
    out = gate.admit([ev("A", 2)], db)
    assert ids(out.ready["A"]) == ["A-2", "A-3"]


# --- gaps ----------------------------------------------------------------------------------------------------------

def test_gap_is_held_and_released_in_order_by_a_later_batch(gate):
    db = Projection()
    out = db.apply(gate.admit([ev("A", 1), ev("A", 3), ev("A", 4)], db))
    assert runs(out) == {"A": [1]} and gate.held == 2 and out.expired == []
    out = db.apply(gate.admit([ev("A", 2)], db))
    assert runs(out) == {"A": [2, 3, 4]}
    assert gate.held == 0 and out.duplicates == [] and out.expired == []


def test_missing_event_later_in_the_same_batch_releases_the_held_ones(gate):
    db = Projection(A=1)
    out = db.apply(gate.admit([ev("A", 4), ev("A", 3), ev("A", 2), ev("A", 5)], db))
    assert runs(out) == {"A": [2, 3, 4, 5]}
    assert gate.held == 0 and out.duplicates == []


def test_release_stops_at_the_next_gap(gate):
    db = Projection(A=1)
    db.apply(gate.admit([ev("A", 3), ev("A", 5), ev("A", 6)], db))
    assert gate.held == 3
    out = db.apply(gate.admit([ev("A", 2)], db))
    assert runs(out) == {"A": [2, 3]} and gate.held == 2
    out = db.apply(gate.admit([ev("A", 4)], db))
    assert runs(out) == {"A": [4, 5, 6]} and gate.held == 0


def test_gap_filled_across_several_batches(gate):
    db = Projection()
    for batch, expected in [([ev("A", 5)], {}), ([ev("A", 3)], {}), ([ev("A", 1)], {"A": [1]}),
                            ([ev("A", 4)], {}), ([ev("A", 2)], {"A": [2, 3, 4, 5]})]:
        assert runs(db.apply(gate.admit(batch, db))) == expected
    assert gate.held == 0


def test_interleaved_aggregates_keep_their_own_order(gate):
    db = Projection()
    batch = [ev("A", 1), ev("B", 2), ev("C", 1), ev("A", 3), ev("B", 1), ev("A", 2), ev("C", 2), ev("B", 3)]
    out = db.apply(gate.admit(batch, db))
    assert runs(out) == {"A": [1, 2, 3], "B": [1, 2, 3], "C": [1, 2]}
    assert gate.held == 0


def test_a_gap_in_one_aggregate_does_not_hold_back_another(gate):
    db = Projection()
    out = db.apply(gate.admit([ev("A", 2), ev("B", 1), ev("B", 2)], db))
    assert runs(out) == {"B": [1, 2]} and gate.held == 1
    out = db.apply(gate.admit([ev("B", 3), ev("A", 1)], db))
    assert runs(out) == {"B": [3], "A": [1, 2]} and gate.held == 0


# --- expiry --------------------------------------------------------------------------------------------------------

def test_held_events_expire_after_hold_seconds_and_are_never_ready(gate, clock):
    db = Projection(A=1)
    out = gate.admit([ev("A", 3), ev("A", 4)], db)
    assert out.expired == [] and gate.held == 2
    clock.now += 29.9
    out = gate.admit([], db)
    assert out.expired == [] and gate.held == 2
    clock.now += 0.1
    out = db.apply(gate.admit([ev("B", 1)], db))
    assert ids(out.expired) == ["A-3", "A-4"]
    assert "A" not in out.ready and gate.held == 0
    out = db.apply(gate.admit([ev("A", 2)], db))
    assert runs(out) == {"A": [2]} and out.expired == [] and gate.held == 0


def test_expiry_takes_the_whole_aggregate_once_its_oldest_event_is_due(gate, clock):
    db = Projection()
    gate.admit([ev("A", 3)], db)
    clock.now += 20
    gate.admit([ev("A", 5), ev("B", 4)], db)
    clock.now += 10
    out = gate.admit([], db)
    assert ids(out.expired) == ["A-3", "A-5"]
    assert gate.held == 1
    clock.now += 20
    assert ids(gate.admit([], db).expired) == ["B-4"]


def test_expired_events_are_ordered_by_hold_time(gate, clock):
    db = Projection()
    gate.admit([ev("B", 3)], db)
    clock.now += 5
    gate.admit([ev("A", 3)], db)
    clock.now += 5
    gate.admit([ev("B", 5)], db)
    clock.now += 100
    assert ids(gate.admit([], db).expired) == ["B-3", "A-3", "B-5"]


def test_gap_filled_in_the_batch_where_it_would_expire_is_applied_not_expired(gate, clock):
    db = Projection()
    gate.admit([ev("A", 2)], db)
    clock.now += 60
    out = db.apply(gate.admit([ev("A", 1)], db))
    assert runs(out) == {"A": [1, 2]} and out.expired == []


def test_zero_hold_expires_every_gap_in_the_same_batch(clock):
    gate = SequenceGate(hold_seconds=0, clock=clock)
    db = Projection()
    out = gate.admit([ev("A", 1), ev("A", 3), ev("B", 2)], db)
    assert runs(out) == {"A": [1]}
    assert ids(out.expired) == ["A-3", "B-2"] and gate.held == 0


def test_max_held_overflow_expires_the_oldest(clock):
    gate = SequenceGate(hold_seconds=1000, max_held=2, clock=clock)
    db = Projection()
    for agg in ("A", "B"):
        assert gate.admit([ev(agg, 3)], db).expired == []
        clock.now += 1
    out = gate.admit([ev("C", 3)], db)
    assert ids(out.expired) == ["A-3"] and gate.held == 2
    clock.now += 1
    out = gate.admit([ev("D", 5), ev("D", 4)], db)
    assert ids(out.expired) == ["B-3", "C-3"] and gate.held == 2
    out = db.apply(gate.admit([ev("D", 3), ev("D", 2), ev("D", 1)], db))
    assert runs(out) == {"D": [1, 2, 3, 4, 5]} and gate.held == 0


def test_overflowed_events_are_never_ready_later(clock):
    gate = SequenceGate(hold_seconds=1000, max_held=1, clock=clock)
    db = Projection()
    gate.admit([ev("A", 2)], db)
    clock.now += 1
    out = gate.admit([ev("A", 3)], db)
    assert ids(out.expired) == ["A-2"] and gate.held == 1
    out = db.apply(gate.admit([ev("A", 1)], db))
    assert runs(out) == {"A": [1]}
    assert gate.held == 1


# --- held events and a moving last_applied -------------------------------------------------------------------------

def test_held_events_made_stale_elsewhere_are_reported_as_duplicates(gate):
    db = Projection(A=1)
    gate.admit([ev("A", 3), ev("A", 4)], db)
    db.last["A"] = 4
    out = gate.admit([], db)
    assert ids(out.duplicates) == ["A-3", "A-4"]
    assert out.ready == {} and out.expired == [] and gate.held == 0


def test_held_events_made_stale_are_duplicates_even_when_the_aggregate_is_in_the_batch(gate):
    db = Projection(A=1)
    gate.admit([ev("A", 3), ev("A", 4)], db)
    db.last["A"] = 4
    out = db.apply(gate.admit([ev("A", 5)], db))
    assert runs(out) == {"A": [5]}
    assert ids(out.duplicates) == ["A-3", "A-4"] and gate.held == 0


def test_held_events_next_in_line_after_last_applied_moved_are_released_with_the_aggregates_next_event(gate):
    db = Projection(A=1)
    gate.admit([ev("A", 3), ev("A", 4), ev("A", 7)], db)
    db.last["A"] = 3
    out = db.apply(gate.admit([ev("A", 5)], db))
    assert ids(out.duplicates) == ["A-3"]
    assert runs(out) == {"A": [4, 5]} and gate.held == 1
    db.last["A"] = 6
    out = db.apply(gate.admit([ev("A", 8)], db))
    assert runs(out) == {"A": [7, 8]} and out.duplicates == [] and gate.held == 0


def test_ready_runs_only_cover_aggregates_in_the_batch(gate):
    db = Projection(A=1)
    gate.admit([ev("A", 3), ev("A", 4)], db)
    db.last["A"] = 3
    out = db.apply(gate.admit([ev("B", 1)], db))
    assert runs(out) == {"B": [1]}
    assert ids(out.duplicates) == ["A-3"] and gate.held == 1
    out = db.apply(gate.admit([ev("A", 4, "again")], db))
    assert ids(out.ready["A"]) == ["A-4"] and ids(out.duplicates) == ["A-4again"] and gate.held == 0


def test_stale_held_events_are_duplicates_and_not_expired(gate, clock):
    db = Projection(A=1)
    gate.admit([ev("A", 3)], db)
    db.last["A"] = 3
    clock.now += 100
    out = gate.admit([ev("A", 4)], db)
    assert ids(out.duplicates) == ["A-3"] and out.expired == [] and runs(out) == {"A": [4]}


def test_last_applied_is_read_once_per_aggregate_per_batch(gate):
    calls: list[str] = []
    db = Projection()

    def last_applied(agg: str) -> int:
        calls.append(agg)
        return db(agg)

    gate.admit([ev("A", 1), ev("A", 2), ev("B", 1), ev("A", 3)], last_applied)
    assert sorted(calls) == ["A", "B"]


# --- property: shuffled, duplicated delivery still applies each event exactly once, in order --------------------------

@pytest.mark.parametrize("seed", range(100))
def test_reordered_and_duplicated_delivery_applies_every_event_once_in_order(seed, clock):
    rng = random.Random(seed)
    lengths = {f"agg-{i}": rng.randint(1, 12) for i in range(rng.randint(1, 6))}
    stream = [ev(agg, seq) for agg, n in lengths.items() for seq in range(1, n + 1)]
    rng.shuffle(stream)
    stream += [dict(e, event_id=e["event_id"] + "-dup") for e in rng.sample(stream, len(stream) // 3)]
    rng.shuffle(stream)
    delivered = len(stream)

    gate = SequenceGate(hold_seconds=1e9, max_held=10_000, clock=clock)
    db = Projection()
    ready = duplicates = 0
    while stream:
        size = rng.randint(1, 7)
        batch, stream = stream[:size], stream[size:]
        out = db.apply(gate.admit(batch, db))
        assert out.expired == []
        assert set(out.ready) <= {e["aggregate_id"] for e in batch}
        ready += out.count
        duplicates += len(out.duplicates)
        clock.now += 1

    assert db.applied == {agg: list(range(1, n + 1)) for agg, n in lengths.items()}
    assert gate.held == 0
    assert ready == sum(lengths.values())
    assert ready + duplicates == delivered


@pytest.mark.parametrize("seed", range(100))
def test_delivery_while_last_applied_also_moves_elsewhere_still_applies_each_event_once(seed, clock):
    """Some events are applied by another path (e.g. a rebuild) between batches, while more of that
    aggregate's events are still to come: the gate must neither apply them again nor keep the events
    after them held."""
    rng = random.Random(50_000 + seed)
    lengths = {f"agg-{i}": rng.randint(1, 12) for i in range(rng.randint(1, 5))}
    stream = [ev(agg, seq) for agg, n in lengths.items() for seq in range(1, n + 1)]
    rng.shuffle(stream)
    stream += [dict(e, event_id=e["event_id"] + "-dup") for e in rng.sample(stream, len(stream) // 4)]
    rng.shuffle(stream)

    gate = SequenceGate(hold_seconds=1e9, max_held=10_000, clock=clock)
    db = Projection()
    elsewhere: dict[str, list[int]] = {}
    while stream:
        pending = sorted({e["aggregate_id"] for e in stream})
        if rng.random() < 0.3:
            agg = rng.choice(pending)
            if db(agg) < lengths[agg]:
                db.last[agg] = db(agg) + 1
                db.applied.setdefault(agg, []).append(db.last[agg])
                elsewhere.setdefault(agg, []).append(db.last[agg])
        size = rng.randint(1, 6)
        batch, stream = stream[:size], stream[size:]
        out = db.apply(gate.admit(batch, db))
        assert out.expired == []
        assert set(out.ready) <= {e["aggregate_id"] for e in batch}
        clock.now += 1

    assert db.applied == {agg: list(range(1, n + 1)) for agg, n in lengths.items() if agg in db.applied}
    assert all(db(agg) == n for agg, n in lengths.items())
    assert gate.held == 0
