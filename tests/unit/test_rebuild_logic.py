"""The pure parts of `cqrs rebuild`: version names, the serving record and its fence, the replay buffer,
progress lines and option checks."""
from __future__ import annotations

import argparse
import asyncio
import io
from collections.abc import Mapping
from typing import Any

import pytest

from agents.engine import BatchProcessor, MemoryProgress, Projection
from agents.replay_buffer import FlushFailed, ReplayBuffer
from agents.read_model_versions import ServingCache, ServingRecord
from domain.read_models import (CUSTOMER_HISTORY, ORDER_VIEWS, PRODUCT_STATS, SALES_PREFIX, OrderCollections,
                             order_collections, product_stats_collection, products_index, products_index_version,
                             sales_day_key, sales_prefix)
from app.operations.rebuild import RebuildOptions, RebuildRefused, add_arguments, lock_key, options_from, rebuild_group
from app.operations.rebuild_progress import RebuildProgress, duration, progress_line
from app.operations.rebuild_targets import REBUILDABLE
from agents.projections import PROJECTIONS


# ---- names ---------------------------------------------------------------------------------------

def test_version_one_keeps_the_original_collection_names():
    assert order_collections(1) == OrderCollections(ORDER_VIEWS, CUSTOMER_HISTORY)


def test_later_versions_get_their_own_collections():
    assert order_collections(3) == OrderCollections(f"{ORDER_VIEWS}_v3", f"{CUSTOMER_HISTORY}_v3")
    with pytest.raises(ValueError, match="start at 1"):
        order_collections(0)


def test_search_index_versions_round_trip_through_their_names():
    assert products_index("products", 4) == "products-v4"
    assert products_index_version("products", "products-v4") == 4
    assert products_index_version("products", "products-vx") is None
    assert products_index_version("products", "other-v4") is None
    assert products_index_version("products", "products-v0") is None


def test_rebuild_groups_are_listed_by_the_dashboard_as_rebuilds():
    from app.operations.dashboard import rebuild_projection

    group = rebuild_group("order-views", 5, "-t1")
    assert group == "cqrs-order-views-rebuild-v5-t1"
    assert rebuild_projection(group) == "order-views"


def test_each_projection_has_its_own_rebuild_lock_in_a_64_bit_key():
    keys = {lock_key(p) for p in PROJECTIONS}
    assert len(keys) == len(PROJECTIONS)
    assert all(0 < k < 2 ** 63 for k in keys)


def test_every_projection_is_rebuildable():
    assert set(REBUILDABLE) == set(PROJECTIONS)


def test_sales_versions_have_their_own_key_prefix_and_collection():
    assert (sales_prefix(1), product_stats_collection(1)) == (SALES_PREFIX, PRODUCT_STATS)
    assert (sales_prefix(2), product_stats_collection(2)) == (f"{SALES_PREFIX}v2:", f"{PRODUCT_STATS}_v2")
    assert sales_day_key("2026-11-29", sales_prefix(3)) == "sales:v3:day:2026-11-29"
    record = ServingRecord.from_document("sales-stats", {"serving": 4})
    assert (record.sales_prefix, record.product_stats) == ("sales:v4:", "product_stats_v4")


def test_no_version_one_sales_key_looks_like_a_later_version():
    import re

    from agents.sales_stats import DIRTY
    later = re.compile(r"^sales:v[0-9]+:")
    version_one = [sales_day_key("2026-11-29"), f"{SALES_PREFIX}product:p-1", f"{SALES_PREFIX}ledger:o-1",
                   SALES_PREFIX + DIRTY]
    assert not any(later.match(k) for k in version_one)
    assert later.match(sales_day_key("2026-11-29", sales_prefix(2)))


# ---- the serving record and its fence ------------------------------------------------------------

def test_no_record_means_version_one_serves_unfenced():
    record = ServingRecord.from_document("order-views", None)
    assert (record.serving, record.fenced(0.0), record.order_collections) == (1, False, OrderCollections())


def test_a_fence_holds_until_it_expires():
    record = ServingRecord.from_document("order-views", {"serving": 2, "fence": {"id": "f", "until": 100.0}})
    assert record.fenced(99.9)
    assert not record.fenced(100.0)


def test_a_lifted_fence_holds_nothing():
    assert not ServingRecord.from_document("order-views", {"serving": 2, "fence": None}).fenced(0.0)


def test_the_next_version_is_above_everything_that_exists_or_is_remembered():
    record = ServingRecord.from_document("order-views", {"serving": 2, "retired": [{"version": 4}],
                                                         "building": None})
    assert record.next_version() == 5
    assert record.next_version({7}) == 8
    building = ServingRecord.from_document("order-views", {"serving": 2, "building": {"version": 9}})
    assert building.next_version() == 10


class FakeVersions:
    """A collection answering find_one from a dict, counting reads (the cache's only I/O)."""

    def __init__(self, docs: dict[str, dict]) -> None:
        self.docs, self.reads = docs, 0

    async def find_one(self, query: dict) -> dict | None:
        self.reads += 1
        return self.docs.get(query["_id"])


def test_readers_see_a_switch_within_the_cache_time():
    versions = FakeVersions({"order-views": {"serving": 2}})
    now = [0.0]
    cache = ServingCache({"read_model_versions": versions}, clock=lambda: now[0])

    async def serving() -> int:
        return (await cache.get("order-views")).serving

    assert asyncio.run(serving()) == 2
    versions.docs["order-views"] = {"serving": 3}
    now[0] = 0.5
    assert asyncio.run(serving()) == 2 and versions.reads == 1
    now[0] = 1.01
    assert asyncio.run(serving()) == 3 and versions.reads == 2


# ---- the replay buffer ---------------------------------------------------------------------------

class CountingStore(Projection):
    """A projection over a dict: counts loads and writes, can reject ids."""

    name = "counting"
    sinks = "dict"
    skips_loading_new_aggregates = False

    def __init__(self) -> None:
        self.docs: dict[str, dict] = {}
        self.loaded: list[str] = []
        self.writes: list[list[str]] = []
        self.assumed: list[set[str]] = []
        self.reject: set[str] = set()

    async def load(self, ids: list[str]) -> dict[str, Any]:
        self.loaded += ids
        return {i: dict(self.docs[i]) for i in ids if i in self.docs}

    def last_seq(self, state: Any) -> int:
        return state["seq"] if state else 0

    async def references(self, events: list[Mapping[str, Any]]) -> None:
        return None

    def apply(self, state: Any, event: Mapping[str, Any], refs: Any) -> Any:
        return {"seq": event["sequence_number"], "n": (state or {}).get("n", 0) + 1}

    def assume_stored(self, ids: set[str]) -> None:
        self.assumed.append(ids)

    async def write(self, changed: dict[str, Any]) -> dict[str, str]:
        self.writes.append(sorted(changed))
        failures = {i: "rejected" for i in changed if i in self.reject}
        self.docs.update({i: s for i, s in changed.items() if i not in self.reject})
        return failures


def run(coro):
    return asyncio.run(coro)


def test_states_stay_in_memory_between_batches_and_are_written_once_per_flush():
    store = CountingStore()
    buffer = ReplayBuffer(store)
    run(buffer.write({"a": {"seq": 1, "n": 1}}))
    assert run(buffer.load(["a", "b"])) == {"a": {"seq": 1, "n": 1}}
    run(buffer.write({"a": {"seq": 2, "n": 2}, "b": {"seq": 1, "n": 1}}))
    assert store.loaded == [] and store.writes == []
    assert run(buffer.flush()) == 2
    assert store.writes == [["a", "b"]] and store.docs["a"] == {"seq": 2, "n": 2}
    assert buffer.pending == 0 and run(buffer.flush()) == 0


def test_a_flush_tells_the_store_which_documents_it_already_holds():
    store = CountingStore()
    buffer = ReplayBuffer(store)
    run(buffer.write({"a": {"seq": 1, "n": 1}}))
    run(buffer.flush())
    run(buffer.write({"a": {"seq": 2, "n": 2}, "b": {"seq": 1, "n": 1}}))
    run(buffer.flush())
    assert store.assumed == [set(), {"a"}]


def test_evicted_states_are_loaded_back_from_the_store_and_memory_stays_bounded():
    store = CountingStore()
    buffer = ReplayBuffer(store, max_states=2)
    run(buffer.write({k: {"seq": 1, "n": 1} for k in ("a", "b", "c")}))
    run(buffer.flush())
    assert len(buffer.states) == 2 and "a" not in buffer.states
    assert run(buffer.load(["a", "z"])) == {"a": {"seq": 1, "n": 1}}
    assert store.loaded == ["a"]   # z was never written: a fresh version cannot hold it
    assert buffer.loads == 1


def test_a_resumed_replay_asks_the_store_for_what_it_has_not_seen():
    store = CountingStore()
    store.docs["a"] = {"seq": 4, "n": 4}
    buffer = ReplayBuffer(store, store_starts_empty=False)
    assert run(buffer.load(["a", "b"])) == {"a": {"seq": 4, "n": 4}}
    assert store.loaded == ["a", "b"] and "a" in buffer.stored


def test_a_rejected_document_fails_the_flush_and_stays_pending():
    store = CountingStore()
    store.reject = {"b"}
    buffer = ReplayBuffer(store, flush_chunk=10)
    run(buffer.write({"a": {"seq": 1, "n": 1}, "b": {"seq": 1, "n": 1}}))
    with pytest.raises(FlushFailed, match="rejected 1 document"):
        run(buffer.flush())
    assert buffer.pending == 2 and "b" not in buffer.stored


def test_a_checkpoint_writes_only_the_states_no_event_touched_for_a_while():
    store = CountingStore()
    buffer = ReplayBuffer(store)
    run(buffer.write({"a": {"seq": 1, "n": 1}}))
    buffer.advance(10)
    run(buffer.write({"b": {"seq": 1, "n": 1}}))
    buffer.advance(3)
    assert run(buffer.flush(older_than=5)) == 1
    assert store.writes == [["a"]] and buffer.dirty == {"b"}
    assert run(buffer.flush()) == 1 and buffer.dirty == set()


def test_the_memory_bound_writes_and_evicts_even_hot_states():
    store = CountingStore()
    buffer = ReplayBuffer(store, max_states=1)
    run(buffer.write({"a": {"seq": 1, "n": 1}, "b": {"seq": 1, "n": 1}}))
    assert run(buffer.flush(older_than=100)) == 1
    assert store.writes == [["a"]] and list(buffer.states) == ["b"] and buffer.dirty == {"b"}


def test_a_written_state_becomes_what_the_store_now_holds():
    """The sales ledger compares the sequence a state was read at: after a flush, that is the new one."""
    class Ledger(CountingStore):
        def as_stored(self, state):
            return {**state, "read": state["seq"]}

    store = Ledger()
    buffer = ReplayBuffer(store)
    run(buffer.write({"a": {"seq": 2, "n": 2, "read": 0}}))
    run(buffer.flush())
    assert buffer.states["a"] == {"seq": 2, "n": 2, "read": 2}


def test_the_sales_state_after_a_write_is_read_at_its_new_sequence():
    from agents.sales_stats import SalesStats

    assert SalesStats.as_stored(None, (0, 3, "facts")) == (3, 3, "facts")


def test_flushes_are_split_into_chunks():
    store = CountingStore()
    buffer = ReplayBuffer(store, flush_chunk=2)
    run(buffer.write({k: {"seq": 1, "n": 1} for k in "abcde"}))
    run(buffer.flush())
    assert [len(w) for w in store.writes] == [2, 2, 1]


class NoDeadLetters:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, record, *, reason: str, error: str, attempts: int = 1) -> None:
        self.sent.append(reason)

    async def flush(self, timeout: float = 30.0) -> None:
        return None


class JsonCodec:
    def decode(self, value: bytes) -> dict:
        import json
        return json.loads(value)


def test_the_engine_behind_the_buffer_applies_each_event_once_in_order():
    import json

    from agents.dead_letters import SourceRecord

    store = CountingStore()
    buffer = ReplayBuffer(store)
    processor = BatchProcessor(buffer, {"t": JsonCodec()}, MemoryProgress(), NoDeadLetters())

    def record(offset: int, agg: str, seq: int) -> SourceRecord:
        value = json.dumps({"event_id": f"{agg}-{seq}", "aggregate_id": agg, "sequence_number": seq,
                            "occurred_at": None}).encode()
        return SourceRecord("t", 0, offset, agg.encode(), value)

    run(processor.process([record(0, "a", 1), record(1, "a", 2), record(2, "a", 2)]))   # a redelivery
    run(processor.process([record(3, "a", 3), record(4, "a", 1)]))                     # an old replay
    run(buffer.flush())
    assert store.docs["a"] == {"seq": 3, "n": 3}
    assert store.writes == [["a"]]


# ---- progress and options ------------------------------------------------------------------------

def test_durations_read_naturally():
    assert [duration(s) for s in (0, 42, 185, 3720)] == ["0s", "42s", "3m05s", "1h02m"]


def test_a_progress_line_has_done_total_rate_and_eta():
    assert progress_line("order-views v2 replay", 250_000, 1_000_000, 10_000.0) == \
        "order-views v2 replay: 250,000/1,000,000 events (25.0%), 10,000 events/s, ETA 1m15s"
    assert progress_line("x", 0, 10, 0.0).endswith("ETA -")
    assert "(100.0%)" in progress_line("x", 0, 0, 0.0)


def test_without_a_terminal_progress_is_plain_lines_at_an_interval():
    out = io.StringIO()
    now = [0.0]
    progress = RebuildProgress(out, tty=False, clock=lambda: now[0], every_s=5.0)
    progress.start("p", 100)
    now[0] = 1.0
    progress.update(10)   # too soon for a line
    now[0] = 5.0
    progress.update(50)
    now[0] = 10.0
    progress.update(100)
    assert progress.finish() == 10.0
    lines = out.getvalue().splitlines()
    assert lines == ["p: 0/100 events (0.0%), 0 events/s, ETA -",
                     "p: 50/100 events (50.0%), 10 events/s, ETA 5s",
                     "p: 100/100 events (100.0%), 10 events/s, ETA 0s",
                     "p: done, 100 events in 10s (10 events/s)"]


def test_in_a_terminal_progress_is_a_bar():
    out = io.StringIO()
    progress = RebuildProgress(out, tty=True)
    progress.start("order-views v2 replay", 1000)
    progress.update(500)
    progress.finish()
    text = out.getvalue()
    assert "order-views v2 replay" in text and "1000/1000" in text and "done, 500 events" in text


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["order-views", *argv])


def test_options_default_to_dropping_the_old_version_after_a_grace_period():
    options = options_from(parse())
    assert options == RebuildOptions() and not options.keep_old and options.grace_s == 30.0


def test_bad_options_are_refused_naming_each_one():
    with pytest.raises(RebuildRefused, match=r"--batch must be between 1 and 100000; --max-rate must be >= 0"):
        options_from(parse("--batch", "0", "--max-rate", "-1"))


def test_versions_are_found_among_collection_names():
    from app.operations.rebuild_targets import collection_versions

    names = ["order_views", "order_views_v3", "customer_order_history_v7", "order_views_vx", "other_v9"]
    assert collection_versions(names, (ORDER_VIEWS, CUSTOMER_HISTORY)) == {1, 3, 7}
    assert collection_versions(["product_stats_v2"], (PRODUCT_STATS,)) == {2}
