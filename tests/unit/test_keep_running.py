"""The one reconnect policy: bounded doubling back-off, reset after a run that had been up a while."""
from __future__ import annotations

import asyncio
import logging

import pytest

from connectors import keep_running

log = logging.getLogger("test")


def run_policy(outcomes: list, durations: list[float]) -> list[float]:
    """Run keep_running over scripted runs (each fails with its outcome after its duration); the waits."""
    now = [0.0]
    waits: list[float] = []
    runs = iter(zip(outcomes, durations))

    async def run() -> None:
        outcome, lasted = next(runs)
        now[0] += lasted
        if outcome is not None:
            raise outcome

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    asyncio.run(keep_running("probe", run, (OSError,), log, stopping=lambda: len(waits) >= len(outcomes),
                             sleep=sleep, first_s=0.5, max_s=4.0, clock=lambda: now[0]))
    return waits


def test_failures_back_off_doubling_up_to_the_bound() -> None:
    assert run_policy([OSError("down")] * 6, [0.1] * 6) == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_run_that_had_been_up_starts_the_back_off_again() -> None:
    assert run_policy([OSError("x"), OSError("x"), OSError("lost after an hour"), OSError("x")],
                      [0.1, 0.1, 3600.0, 0.1]) == [0.5, 1.0, 0.5, 1.0]


def test_a_run_that_ends_without_error_is_run_again_soon() -> None:
    assert run_policy([OSError("x"), OSError("x"), None], [0.1, 0.1, 0.1]) == [0.5, 1.0, 0.5]


def test_an_error_it_was_not_told_to_expect_propagates() -> None:
    async def run() -> None:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        asyncio.run(keep_running("probe", run, (OSError,), log))
