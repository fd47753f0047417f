"""The pure parts of `cqrs lag`: offset and event-time lag per partition, totals, seek rounds, output,
and telling an unreachable Kafka from a slow one (classification, bounded retries, exit codes)."""
from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
from confluent_kafka import KafkaError, KafkaException

from app.operations.lag import (LagError, PartitionOffsets, add_arguments, build_row, event_time_lag, exit_code, format_table,
                     run, seek_rounds, select_projections, to_json, totals)
from app.settings import Settings
from agents.projections import PROJECTIONS, consumer_group
from connectors import ServiceUnavailable
from connectors.kafka import KafkaSlow, after_metadata, retry_slow

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def offsets(committed: int | None, end: int, earliest: int = 0, partition: int = 0,
            topic: str = "order-events") -> PartitionOffsets:
    return PartitionOffsets(topic, partition, committed, earliest, end)


def test_offset_lag_is_end_minus_committed():
    row = build_row("order-views", "cqrs-order-views", offsets(40, 100), NOW - timedelta(seconds=7), NOW)
    assert (row.committed, row.end, row.offset_lag) == (40, 100, 60)


def test_a_group_that_committed_nothing_lags_by_what_the_partition_still_holds():
    row = build_row("order-views", "g", offsets(None, 100, earliest=30), NOW - timedelta(seconds=1), NOW)
    assert row.committed is None and row.offset_lag == 70


def test_a_committed_offset_deleted_by_retention_counts_from_the_earliest_offset():
    assert build_row("order-views", "g", offsets(5, 100, earliest=30), NOW, NOW).offset_lag == 70


def test_caught_up_means_no_event_time_lag_however_old_the_last_event():
    assert event_time_lag(offsets(100, 100), NOW - timedelta(days=3), NOW) == 0.0
    assert event_time_lag(offsets(None, 0), None, NOW) == 0.0
    assert event_time_lag(offsets(None, 30, earliest=30), None, NOW) == 0.0


def test_behind_means_seconds_since_the_oldest_unprocessed_event():
    assert event_time_lag(offsets(99, 100), NOW - timedelta(seconds=12.5), NOW) == 12.5


def test_an_unreadable_oldest_event_leaves_the_event_time_lag_unknown():
    assert event_time_lag(offsets(10, 100), None, NOW) is None


def test_clock_skew_never_shows_as_negative_staleness():
    assert event_time_lag(offsets(10, 100), NOW + timedelta(seconds=3), NOW) == 0.0


def test_totals_sum_offset_lag_and_take_the_stalest_partition():
    rows = [build_row("order-views", "g1", offsets(0, 5, partition=0), NOW - timedelta(seconds=4), NOW),
            build_row("order-views", "g1", offsets(3, 3, partition=1), None, NOW),
            build_row("sales-stats", "g2", offsets(1, 2, partition=0), NOW - timedelta(seconds=9), NOW)]
    got = {t.projection: t for t in totals(rows)}
    assert list(got) == ["order-views", "sales-stats"]
    assert (got["order-views"].offset_lag, got["order-views"].event_time_lag_s, got["order-views"].partitions) == \
        (5, 4.0, 2)
    assert (got["sales-stats"].group, got["sales-stats"].offset_lag, got["sales-stats"].event_time_lag_s) == \
        ("g2", 1, 9.0)


def test_a_total_is_unknown_when_a_lagging_partition_is():
    rows = [build_row("order-views", "g", offsets(0, 5, partition=0), NOW - timedelta(seconds=4), NOW),
            build_row("order-views", "g", offsets(0, 5, partition=1), None, NOW)]
    assert totals(rows)[0].event_time_lag_s is None


def test_seek_rounds_hold_each_partition_once_per_round():
    targets = {("t", 0, 7), ("t", 0, 3), ("t", 1, 4), ("u", 0, 1), ("t", 0, 3)}
    assert seek_rounds(targets) == [[("t", 0, 3), ("t", 1, 4), ("u", 0, 1)], [("t", 0, 7)]]
    assert seek_rounds([]) == []


def test_table_has_a_line_per_partition_and_a_total_per_projection():
    rows = [build_row("order-views", "cqrs-order-views", offsets(None, 12, partition=0), NOW - timedelta(seconds=2),
                      NOW),
            build_row("order-views", "cqrs-order-views", offsets(4, 4, partition=1), None, NOW),
            build_row("product-search", "cqrs-product-search", offsets(8, 9, topic="product-events"), None, NOW)]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["PROJECTION", "TOPIC", "PARTITION", "COMMITTED", "END", "OFFSET", "LAG",
                                "EVENT-TIME", "LAG", "S"]
    assert lines[1].split() == ["order-views", "order-events", "0", "-", "12", "12", "2.0"]
    assert lines[2].split() == ["order-views", "order-events", "1", "4", "4", "0", "0.0"]
    assert lines[3].split() == ["order-views", "total", "group", "cqrs-order-views", "2", "partitions", "12", "2.0"]
    assert lines[4].split() == ["product-search", "product-events", "0", "8", "9", "1", "?"]
    assert lines[5].split()[-2:] == ["1", "?"]
    assert len({len(line) for line in lines[:3]}) == 1, "columns are aligned"


def test_json_holds_rows_and_totals_with_unknowns_as_null():
    rows = [build_row("sales-stats", "g", offsets(1, 3), None, NOW)]
    doc = json.loads(to_json(rows))
    assert doc["rows"] == [{"projection": "sales-stats", "group": "g", "topic": "order-events", "partition": 0,
                            "committed": 1, "end": 3, "offset_lag": 2, "event_time_lag_s": None}]
    assert doc["totals"] == [{"projection": "sales-stats", "group": "g", "partitions": 1, "offset_lag": 2,
                              "event_time_lag_s": None}]


def test_projection_selection_names_the_valid_ones_when_unknown():
    assert select_projections(None) == PROJECTIONS
    assert select_projections("sales-stats") == ("sales-stats",)
    with pytest.raises(LagError) as err:
        select_projections("nope")
    assert all(p in str(err.value) for p in PROJECTIONS) and "\n" not in str(err.value)


def test_lag_reads_the_group_the_workers_join():
    from app.settings import Settings
    from agents.worker import create_worker_app

    assert consumer_group("order-views", "") == "cqrs-order-views"
    app = create_worker_app("sales-stats", Settings(projection_group_suffix="-rebuild"), dict)
    assert app.conf.id == consumer_group("sales-stats", "-rebuild") == "cqrs-sales-stats-rebuild"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_watch_defaults_to_two_seconds_and_is_off_unless_asked():
    assert parse().watch is None
    assert parse("--watch").watch == 2.0
    assert parse("--watch", "5").watch == 5.0
    assert parse("--group-suffix=-x").group_suffix == "-x"


def test_invalid_requests_fail_before_any_io():
    with pytest.raises(LagError):
        run(parse("--projection", "nope"), Settings(kafka_bootstrap_servers="127.0.0.1:9"), io.StringIO())
    with pytest.raises(LagError):
        run(parse("--watch", "0"), Settings(kafka_bootstrap_servers="127.0.0.1:9"), io.StringIO())


# ---- unreachable or slow --------------------------------------------------------------------------

KAFKA = Settings(kafka_bootstrap_servers="broker-1:9092")


def kafka_error(code: int, **flags: bool) -> KafkaException:
    return KafkaException(KafkaError(code, **flags))


@pytest.mark.parametrize("exc", [TimeoutError(), concurrent.futures.TimeoutError(),
                                 kafka_error(KafkaError._TIMED_OUT), kafka_error(KafkaError.REQUEST_TIMED_OUT)])
def test_a_timeout_after_metadata_answered_is_slow(exc: BaseException):
    failure = after_metadata(KAFKA, "listing end offsets", exc)
    assert isinstance(failure, KafkaSlow) and failure.service == "kafka"
    assert str(failure) == "kafka slow: listing end offsets timed out after 1 attempt (broker-1:9092 answered metadata)"


def test_a_retriable_error_after_metadata_answered_is_slow():
    failure = after_metadata(KAFKA, "reading the committed offsets of cqrs-order-views",
                             kafka_error(KafkaError.COORDINATOR_LOAD_IN_PROGRESS, retriable=True))
    assert isinstance(failure, KafkaSlow)
    assert "cqrs-order-views: Broker: Coordinator load in progress" in str(failure)


def test_any_other_failure_is_unreachable():
    failure = after_metadata(KAFKA, "listing end offsets", kafka_error(KafkaError._TRANSPORT))
    assert not isinstance(failure, KafkaSlow)
    assert str(failure) == "kafka unreachable at broker-1:9092: Local: Broker transport failure"
    assert exit_code(failure) == 2 and exit_code(LagError("missing topic(s) x")) == 2
    assert exit_code(KafkaSlow("broker-1:9092", "x timed out")) == 3


class Clock:
    """Time that passes only when an attempt or a pause says so."""

    def __init__(self) -> None:
        self.now = 100.0
        self.pauses: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def attempts_that(clock: Clock, outcomes: list[BaseException | str], each_s: float) -> tuple[list[int], Callable]:
    calls: list[int] = []

    def attempt() -> str:
        calls.append(1)
        clock.now += each_s
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return calls, attempt


def slow() -> KafkaSlow:
    return KafkaSlow("broker-1:9092", "listing end offsets timed out")


def test_a_slow_answer_is_tried_again_with_growing_pauses():
    clock = Clock()
    calls, attempt = attempts_that(clock, [slow(), slow(), "rows"], each_s=1.0)
    assert retry_slow(attempt, 3.0, clock=lambda: clock.now, sleep=clock.sleep) == "rows"
    assert len(calls) == 3 and clock.pauses == [0.25, 0.5]


def test_still_slow_after_every_attempt_says_how_many_in_one_line():
    clock = Clock()
    calls, attempt = attempts_that(clock, [slow()] * 5, each_s=3.0)
    with pytest.raises(KafkaSlow) as err:
        retry_slow(attempt, 3.0, clock=lambda: clock.now, sleep=clock.sleep)
    assert len(calls) == 3 and err.value.attempts == 3
    assert str(err.value) == ("kafka slow: listing end offsets timed out after 3 attempts in 9.8s "
                              "(broker-1:9092 answered metadata)")


def test_no_try_starts_after_the_window_of_three_connect_timeouts():
    clock = Clock()
    calls, attempt = attempts_that(clock, [slow()] * 3, each_s=5.0)  # attempts slower than the timeout
    with pytest.raises(KafkaSlow) as err:
        retry_slow(attempt, 3.0, clock=lambda: clock.now, sleep=clock.sleep)
    assert len(calls) == 2 and err.value.attempts == 2 and "after 2 attempts in 10.2s" in str(err.value)


@pytest.mark.parametrize("failure", [ServiceUnavailable("kafka", "broker-1:9092", "Local: Broker transport failure"),
                                     LagError("missing topic(s) order-events")])
def test_unreachable_and_unanswerable_are_not_tried_again(failure: Exception):
    clock = Clock()
    calls, attempt = attempts_that(clock, [failure, "rows"], each_s=3.0)
    with pytest.raises(type(failure)) as err:
        retry_slow(attempt, 3.0, clock=lambda: clock.now, sleep=clock.sleep)
    assert err.value is failure and len(calls) == 1 and clock.pauses == []
