"""Which aggregates a batch loads state for: skipping brand-new aggregates is only allowed for
projections whose writes never replace a newer stored state."""
from __future__ import annotations

from agents.engine import BatchProcessor, MemoryProgress


class Projection:
    name = "test"

    def __init__(self, skips: bool) -> None:
        self.skips_loading_new_aggregates = skips


def ev(agg: str, seq: int) -> dict:
    return {"aggregate_id": agg, "sequence_number": seq, "event_id": f"{agg}-{seq}"}


def processor(skips: bool, progress: MemoryProgress | None = None) -> BatchProcessor:
    return BatchProcessor(Projection(skips), {}, progress or MemoryProgress(), dead_letters=None)


BATCH = [ev("new", 1), ev("new", 2), ev("old", 4), ev("replayed", 1), ev("late", 2), ev("late", 1)]


def test_every_aggregate_is_loaded_by_default():
    assert processor(skips=False)._to_load(BATCH) == ["new", "old", "replayed", "late"]


def test_aggregates_starting_at_their_first_event_and_unknown_to_progress_are_not_loaded():
    progress = MemoryProgress()
    progress.record("replayed", 3, ["replayed-3"])
    assert processor(skips=True, progress=progress)._to_load(BATCH) == ["old", "replayed", "late"]
