"""Crash-safe multi-document writes and outage handling of the batch engine, as pure logic.

A projection here writes two documents per aggregate (a view, then a history entry), like order-views;
a crash is an exception that escapes `process` between the two (nothing after it runs, progress is not
recorded), and the restart is a new processor over the same stores and progress tables."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.exceptions
from confluent_kafka import KafkaError, KafkaException
from elasticsearch import ApiError, ConnectionError as EsConnectionError
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
from pymongo.errors import OperationFailure, ServerSelectionTimeoutError

from agents.dead_letters import SourceRecord
from agents.engine import BatchProcessor, MemoryProgress, Projection, RetryPolicy, SinkFailed
from agents.outages import StoreHealth, outage_store
from connectors import ServiceUnavailable

FAST = RetryPolicy(attempts=3, base_delay_s=0.001, max_delay_s=0.002)


class Crash(BaseException):
    """The process dying: not an Exception, so nothing in the engine catches or retries it."""


class JsonCodec:
    def decode(self, value: bytes) -> dict:
        return json.loads(value)


class TwoDocuments(Projection):
    """Writes `views[agg]` (whose seq is the state loaded next time) and then `history[agg]`."""

    name = "two-documents"
    sinks = "memory"

    def __init__(self, views: dict, history: dict, crash_between: bool = False) -> None:
        self.views, self.history, self.crash_between = views, history, crash_between

    async def load(self, ids: list[str]) -> dict[str, Any]:
        return {i: dict(self.views[i]) for i in ids if i in self.views}

    def last_seq(self, state: Any) -> int:
        return state["seq"] if state else 0

    async def references(self, events: list) -> None:
        return None

    def apply(self, state: Any, event: dict, refs: Any) -> Any:
        return {"seq": event["sequence_number"], "status": event["status"]}

    async def write(self, changed: dict[str, Any]) -> dict[str, str]:
        self.views.update({k: dict(v) for k, v in changed.items()})
        if self.crash_between:
            raise Crash()
        self.history.update({k: dict(v) for k, v in changed.items()})
        return {}


def record(agg: str, seq: int, status: str, offset: int) -> SourceRecord:
    body = {"aggregate_id": agg, "sequence_number": seq, "event_id": f"{agg}-{seq}", "status": status,
            "occurred_at": None}
    return SourceRecord("orders", 0, offset, agg.encode(), json.dumps(body).encode())


def processor(projection: Any, progress: MemoryProgress) -> BatchProcessor:
    return BatchProcessor(projection, {"orders": JsonCodec()}, progress, dead_letters=None, retry=FAST)


def run(coro):
    return asyncio.run(coro)


def test_a_crash_between_two_writes_is_completed_when_the_batch_is_read_again():
    views, history, progress = {}, {}, MemoryProgress()
    run(processor(TwoDocuments(views, history), progress).process([record("o1", 1, "pending", 0)]))
    with pytest.raises(Crash):
        run(processor(TwoDocuments(views, history, crash_between=True), progress).process(
            [record("o1", 2, "shipped", 1)]))
    assert (views["o1"]["status"], history["o1"]["status"]) == ("shipped", "pending")

    report = run(processor(TwoDocuments(views, history), progress).process([record("o1", 2, "shipped", 1)]))

    assert history["o1"] == views["o1"] == {"seq": 2, "status": "shipped"}
    assert (report.applied, report.stale, report.rewritten) == (0, 1, 1)
    assert progress.last("o1") == 2


def test_a_complete_earlier_write_is_only_skipped_once_progress_recorded_it():
    views, history, progress = {}, {}, MemoryProgress()
    batch = [record("o1", 1, "pending", 0), record("o1", 2, "shipped", 1)]
    run(processor(TwoDocuments(views, history), progress).process(batch))
    report = run(processor(TwoDocuments(views, history), progress).process(batch))
    assert (report.duplicates, report.rewritten, report.applied) == (2, 0, 0)


def test_a_redelivery_whose_stored_state_is_ahead_of_lost_progress_rewrites_that_state():
    """Progress tables lost (a new consumer group over existing read models): the stored state is written
    again once, whole, and the stored sequence becomes the recorded progress."""
    views = {"o1": {"seq": 3, "status": "delivered"}}
    history = {"o1": {"seq": 2, "status": "shipped"}}
    progress = MemoryProgress()
    report = run(processor(TwoDocuments(views, history), progress).process([record("o1", 2, "shipped", 0)]))
    assert history["o1"] == {"seq": 3, "status": "delivered"} and progress.last("o1") == 3
    assert report.rewritten == 1 and not processor(TwoDocuments(views, history), progress).held_floor


class StatusOnly(TwoDocuments):
    """Keeps only the status: an event that leaves it as it was changes nothing stored (like a stock change
    that keeps a product in stock for the search index)."""

    writes = 0

    def needs_write(self, stored: Any, state: Any) -> bool:
        return stored is None or stored["status"] != state["status"]

    async def write(self, changed: dict[str, Any]) -> dict[str, str]:
        self.writes += 1
        return await super().write(changed)


def test_an_event_that_changes_nothing_stored_is_applied_without_a_write():
    views, history, progress = {}, {}, MemoryProgress()
    projection = StatusOnly(views, history)
    run(processor(projection, progress).process([record("o1", 1, "pending", 0)]))
    report = run(processor(projection, progress).process([record("o1", 2, "pending", 1)]))
    assert (report.applied, projection.writes, views["o1"]["seq"], progress.last("o1")) == (1, 1, 1, 2)

    # the stored sequence trails the progress tables: the next event is next, not after a gap
    again = run(processor(projection, progress).process([record("o1", 2, "pending", 1), record("o1", 3, "shipped", 2)]))
    assert (again.duplicates, again.applied, again.dead_lettered) == (1, 1, 0)
    assert views["o1"] == history["o1"] == {"seq": 3, "status": "shipped"} and projection.writes == 2


def test_unwritten_events_are_applied_again_when_the_progress_tables_are_lost():
    """A new consumer group over the same store: the events not written since its stored sequence are
    applied again, in order, and only a change is written."""
    views = {"o1": {"seq": 1, "status": "pending"}}
    history = dict(views)
    projection = StatusOnly(views, history)
    report = run(processor(projection, MemoryProgress()).process(
        [record("o1", 2, "pending", 1), record("o1", 3, "pending", 2), record("o1", 4, "cancelled", 3)]))
    assert (report.applied, report.rewritten, projection.writes) == (3, 0, 1)
    assert views["o1"] == {"seq": 4, "status": "cancelled"}


class Flaky:
    """Fails `times` times with `error`, then answers."""

    def __init__(self, error: BaseException, times: int) -> None:
        self.error, self.times, self.calls = error, times, 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.times:
            raise self.error
        return "ok"


def test_an_outage_is_waited_out_past_the_attempt_limit_and_reported_meanwhile():
    health = StoreHealth("p")
    health.started = True
    flaky = Flaky(ServerSelectionTimeoutError("no servers"), times=10)

    async def watch() -> list[bool]:
        seen = []
        task = asyncio.create_task(FAST.run("write", flaky, health=health))
        while not task.done():
            seen.append(health.ready)
            await asyncio.sleep(0)
        assert await task == "ok"
        return seen

    readiness = run(watch())
    assert flaky.calls == 11
    assert False in readiness and health.ready and not health.down


def test_a_failure_that_is_not_an_outage_ends_after_the_bounded_attempts():
    flaky = Flaky(OperationFailure("document failed validation"), times=10)
    with pytest.raises(SinkFailed):
        run(FAST.run("write", flaky, health=StoreHealth("p")))
    assert flaky.calls == FAST.attempts


def test_an_outage_longer_than_its_limit_ends_the_worker():
    policy = RetryPolicy(attempts=3, base_delay_s=0.001, max_delay_s=0.001, outage_limit_s=0.0)
    with pytest.raises(SinkFailed, match="unavailable for over"):
        run(policy.run("write", Flaky(redis.exceptions.ConnectionError("refused"), times=100),
                       health=StoreHealth("p")))


def test_a_store_that_never_answers_is_an_outage_not_a_hang():
    async def silent() -> None:
        await asyncio.sleep(3600)

    policy = RetryPolicy(attempts=1, base_delay_s=0.001, attempt_timeout_s=0.01, outage_limit_s=0.05)
    health = StoreHealth("p")
    with pytest.raises(SinkFailed):
        run(policy.run("write", silent, health=health))
    assert "network" in health.down


def es_api_error(status: int) -> ApiError:
    meta = ApiResponseMeta(status=status, http_version="1.1", headers=HttpHeaders(), duration=0.0,
                           node=NodeConfig("http", "127.0.0.1", 9200))
    return ApiError("unavailable", meta, {})


def chained(cause: BaseException) -> RuntimeError:
    try:
        raise RuntimeError("wrapped") from cause
    except RuntimeError as exc:
        return exc


@pytest.mark.parametrize("exc, store", [
    (ServerSelectionTimeoutError("no servers"), "mongodb"),
    (redis.exceptions.ConnectionError("refused"), "redis"),
    (redis.exceptions.TimeoutError("timed out"), "redis"),
    (EsConnectionError("refused"), "elasticsearch"),
    (es_api_error(503), "elasticsearch"),
    (es_api_error(429), "elasticsearch"),
    (KafkaException(KafkaError(KafkaError._TRANSPORT)), "kafka"),
    (ServiceUnavailable("kafka", "127.0.0.1:9092", "timed out"), "kafka"),
    (chained(redis.exceptions.ConnectionError("refused")), "redis"),
    (TimeoutError(), "network"),
    (es_api_error(400), None),
    (OperationFailure("bad update"), None),
    (KeyError("status"), None),
    (KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)), None),
])
def test_outages_are_told_apart_from_bugs_and_rejections(exc: BaseException, store: str | None):
    assert outage_store(exc) == store


def test_time_waiting_for_a_store_does_not_count_towards_a_sequence_gap():
    now = [0.0]
    health = StoreHealth("p", clock=lambda: now[0])
    now[0] = 10.0
    health.failed("elasticsearch", "write", ConnectionError("refused"))
    now[0] = 70.0
    assert health.consuming_time() == 10.0
    health.recovered({"elasticsearch"})
    now[0] = 75.0
    assert health.consuming_time() == 15.0


def test_events_held_for_a_gap_keep_the_commit_below_them_until_applied():
    """A held event's record travels with it through the gate: its offset floors the commit, it is
    recorded with its own partition once the gap fills, and the floor goes away."""
    views, history, progress = {}, {}, MemoryProgress()
    engine = processor(TwoDocuments(views, history), progress)
    run(engine.process([record("o1", 2, "shipped", 7), record("o2", 1, "pending", 8)]))
    assert engine.held_floor == {("orders", 0): 7} and "o1" not in views and views["o2"]["seq"] == 1

    report = run(engine.process([record("o1", 1, "pending", 9)]))

    assert report.applied == 2 and views["o1"] == history["o1"] == {"seq": 2, "status": "shipped"}
    assert engine.held_floor == {} and progress.last("o1") == 2
