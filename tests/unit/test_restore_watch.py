"""A Faust table restore that stops moving while Kafka answers ends the worker; one waiting for Kafka does not."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from agents.recovery_watch import RestoreWatch


@dataclass
class FakeRestore:
    in_recovery: bool = True
    remaining: int = 100

    def active_remaining_total(self) -> int:
        return self.remaining


class Stalled(Exception):
    pass


def watch(restore: FakeRestore, kafka_up: list[bool], now: list[float]) -> RestoreWatch:
    async def answers() -> bool:
        return kafka_up[0]

    def stalled(why: str) -> None:
        raise Stalled(why)

    return RestoreWatch(lambda: restore, answers, stalled, stall_s=20.0, clock=lambda: now[0])


def run_at(w: RestoreWatch, now: list[float], t: float) -> None:
    now[0] = t
    asyncio.run(w.check())


def test_a_restore_that_does_not_move_while_kafka_answers_ends_the_worker() -> None:
    restore, now = FakeRestore(), [0.0]
    w = watch(restore, [True], now)
    run_at(w, now, 0.0)
    run_at(w, now, 19.0)
    with pytest.raises(Stalled, match="100 changelog records to read, none read for 21s"):
        run_at(w, now, 21.0)


def test_a_moving_restore_is_left_alone() -> None:
    restore, now = FakeRestore(), [0.0]
    w = watch(restore, [True], now)
    for t in range(0, 200, 10):
        restore.remaining -= 1
        run_at(w, now, float(t))


def test_time_without_kafka_does_not_count() -> None:
    restore, now, kafka_up = FakeRestore(), [0.0], [False]
    w = watch(restore, kafka_up, now)
    run_at(w, now, 0.0)
    run_at(w, now, 25.0)   # Kafka away: the clock restarts here
    kafka_up[0] = True
    run_at(w, now, 40.0)
    with pytest.raises(Stalled):
        run_at(w, now, 46.0)


def test_a_finished_restore_resets_the_watch() -> None:
    restore, now = FakeRestore(), [0.0]
    w = watch(restore, [True], now)
    run_at(w, now, 0.0)
    restore.in_recovery = False
    run_at(w, now, 30.0)
    restore.in_recovery = True   # the next rebalance's restore starts its own clock
    run_at(w, now, 31.0)
    run_at(w, now, 50.0)
    with pytest.raises(Stalled):
        run_at(w, now, 52.0)
