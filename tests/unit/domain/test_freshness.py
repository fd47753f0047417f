"""What an answer may say of its freshness, from the relay's heads and the workers' reports."""
from __future__ import annotations

from domain.freshness import (CURRENT, Freshness, PartitionReport, State, partition_freshness, worst)

NOW = 1_000.0


def test_nothing_published_and_nothing_reported_is_current() -> None:
    assert partition_freshness(None, None, NOW) == CURRENT


def test_applied_everything_the_relay_published_is_current() -> None:
    report = PartitionReport(applied=10, head=10, at=NOW - 30)
    assert partition_freshness(report, 10, NOW) == CURRENT


def test_a_stopped_worker_lags_by_the_time_since_it_was_last_caught_up() -> None:
    report = PartitionReport(applied=10, head=10, at=NOW - 30, last_event_at=NOW - 40)
    assert partition_freshness(report, 11, NOW) == Freshness(State.lagging, 30.0)


def test_a_worker_behind_when_it_reported_lags_by_the_age_of_its_last_applied_event() -> None:
    report = PartitionReport(applied=10, head=50, at=NOW - 1, last_event_at=NOW - 7)
    assert partition_freshness(report, 50, NOW) == Freshness(State.lagging, 7.0)


def test_the_head_the_worker_saw_counts_when_the_relay_reported_none() -> None:
    report = PartitionReport(applied=10, head=12, at=NOW - 1, last_event_at=NOW - 3)
    assert partition_freshness(report, None, NOW).state is State.lagging


def test_published_events_without_any_report_lag_by_an_unknown_time() -> None:
    assert partition_freshness(None, 5, NOW) == Freshness(State.lagging, None)
    assert partition_freshness(PartitionReport(0, 5, NOW), 5, NOW) == Freshness(State.lagging, None)


def test_an_answer_from_several_partitions_is_as_stale_as_the_stalest() -> None:
    assert worst([CURRENT, CURRENT]) == CURRENT
    assert worst([CURRENT, Freshness(State.lagging, 1.5), Freshness(State.lagging, 4.0)]) == \
        Freshness(State.lagging, 4.0)
    assert worst([Freshness(State.lagging, 1.0), Freshness(State.lagging, None)]) == Freshness(State.lagging, None)


def test_within_accepts_current_and_a_known_lag_up_to_the_bound() -> None:
    assert CURRENT.within(0)
    assert Freshness(State.lagging, 2.0).within(2.0)
    assert not Freshness(State.lagging, 2.1).within(2.0)
    assert not Freshness(State.lagging, None).within(2.0)


def test_reports_round_trip_and_unreadable_ones_count_as_none() -> None:
    report = PartitionReport(applied=3, head=4, at=12.5, last_event_at=11.0)
    assert PartitionReport.loads(report.dumps()) == report
    assert PartitionReport.loads("{not json") is None
    assert PartitionReport.loads('{"applied": 1}') is None
    assert PartitionReport.loads(None) is None


def test_fields_are_what_the_answer_carries() -> None:
    assert CURRENT.fields() == {"freshness": "current", "lag_s": None}
    assert Freshness(State.lagging, 1.23456).fields() == {"freshness": "lagging", "lag_s": 1.235}
