"""SourceOffsets: per partition, offsets are processed in order, none skipped, none twice."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from agents.offsets import SourceOffsets


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int


def recs(*specs: tuple[int, int], topic: str = "t") -> list[Rec]:
    return [Rec(topic, p, o) for p, o in specs]


@pytest.fixture
def offsets() -> SourceOffsets:
    o = SourceOffsets()
    o.reset(1)
    return o


def test_contiguous_records_from_the_start_are_processed(offsets):
    offsets.start(("t", 0), 5)
    batch = recs((0, 5), (0, 6), (0, 7))
    admitted = offsets.admit(batch)
    assert admitted.process == batch and admitted.redelivered == 0 and admitted.reread_from == {}
    offsets.advance(admitted.process)
    assert offsets.committable(("t", 0)) == 8


def test_nothing_is_committable_before_a_partition_is_processed(offsets):
    offsets.start(("t", 0), 5)
    offsets.admit(recs((0, 5)))
    assert offsets.committable(("t", 0)) == 5
    assert offsets.committable(("t", 1)) is None


def test_redelivered_records_are_counted_and_skipped(offsets):
    offsets.start(("t", 0), 10)
    admitted = offsets.admit(recs((0, 8), (0, 9), (0, 10)))
    assert [r.offset for r in admitted.process] == [10] and admitted.redelivered == 2


def test_a_skipped_offset_stops_its_partition_and_asks_for_a_reread(offsets):
    offsets.start(("t", 0), 3)
    offsets.start(("t", 1), 0)
    admitted = offsets.admit(recs((0, 3), (1, 0), (0, 5), (1, 1), (0, 6), (0, 4)))
    assert [(r.partition, r.offset) for r in admitted.process] == [(0, 3), (1, 0), (1, 1)]
    assert admitted.reread_from == {("t", 0): 4}
    offsets.advance(admitted.process)
    assert offsets.committable(("t", 0)) == 4 and offsets.committable(("t", 1)) == 2


def test_the_reread_records_are_then_processed(offsets):
    offsets.start(("t", 0), 3)
    first = offsets.admit(recs((0, 3), (0, 5)))
    offsets.advance(first.process)
    again = offsets.admit(recs((0, 6), (0, 3), (0, 4), (0, 5), (0, 6)))
    assert again.reread_from == {("t", 0): 4}  # a leftover after the hole, before the re-read arrives
    later = offsets.admit(recs((0, 3), (0, 4), (0, 5), (0, 6)))
    assert [r.offset for r in later.process] == [4, 5, 6] and later.redelivered == 1


def test_an_unstarted_partition_starts_at_its_first_record(offsets):
    admitted = offsets.admit(recs((2, 40), (2, 41)))
    assert [r.offset for r in admitted.process] == [40, 41]
    assert offsets.unknown(recs((2, 40), (3, 1), (3, 2))) == [("t", 2), ("t", 3)]


def test_reset_forgets_every_partition(offsets):
    offsets.start(("t", 0), 7)
    offsets.reset(2)
    assert offsets.generation == 2 and not offsets.known(("t", 0)) and offsets.committable(("t", 0)) is None


def test_topics_are_tracked_separately(offsets):
    offsets.start(("a", 0), 0)
    offsets.start(("b", 0), 100)
    admitted = offsets.admit([Rec("a", 0, 0), Rec("b", 0, 100), Rec("b", 0, 102)])
    assert [(r.topic, r.offset) for r in admitted.process] == [("a", 0), ("b", 100)]
    assert admitted.reread_from == {("b", 0): 101}


def test_advance_never_moves_back(offsets):
    offsets.start(("t", 0), 0)
    offsets.advance(recs((0, 0), (0, 1), (0, 2)))
    offsets.advance(recs((0, 1)))
    assert offsets.committable(("t", 0)) == 3
