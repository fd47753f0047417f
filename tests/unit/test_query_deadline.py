"""The query API's per-request budget (app/queries/stores.py `Deadline`) and the cache bypass
(app/queries/cache.py `CacheGuard`), as pure asyncio code: no store is involved."""
from __future__ import annotations

import asyncio
import time

import pytest

from app.queries.cache import CacheGuard
from app.queries.stores import CACHE_FLOOR_S, Deadline, StoreUnavailable

BUDGET_S = 0.2
SLACK_S = 0.1  # event-loop scheduling


async def hang() -> None:
    """A call that never completes, behind a client timeout far beyond the budget."""
    await asyncio.wait_for(asyncio.Event().wait(), timeout=30)


def test_remaining_time_counts_down_and_never_below_zero():
    now = [10.0]
    deadline = Deadline(5.0, clock=lambda: now[0])
    assert deadline.remaining() == 5.0
    now[0] += 2
    assert deadline.remaining() == 3.0
    now[0] += 10
    assert deadline.remaining() == 0.0


def test_a_call_in_time_answers_and_is_handed_what_is_left():
    async def scenario() -> tuple[float, float, str]:
        deadline = Deadline(BUDGET_S)
        async with deadline.within("mongodb") as whole:
            pass
        async with deadline.within("redis", limit=0.05) as capped:
            await asyncio.sleep(0)
            return whole, capped, "answer"

    whole, capped, answer = asyncio.run(scenario())
    assert 0 < whole <= BUDGET_S and capped == 0.05 and answer == "answer"


def test_calls_of_one_request_share_the_budget_whatever_the_client_timeouts():
    """Two hanging calls in sequence (the serving pointer, then the view) take the budget once."""
    async def scenario() -> tuple[list[str], float]:
        deadline = Deadline(BUDGET_S)
        failures = []
        start = time.monotonic()
        for _ in range(2):
            try:
                async with deadline.within("mongodb"):
                    await hang()
            except StoreUnavailable as exc:
                failures.append(exc.service)
        return failures, time.monotonic() - start

    failures, elapsed = asyncio.run(scenario())
    assert failures == ["mongodb", "mongodb"]
    assert BUDGET_S <= elapsed < BUDGET_S + SLACK_S


def test_a_spent_budget_does_not_even_ask_and_names_the_store_that_took_it():
    async def scenario() -> list[str]:
        now = [0.0]
        deadline = Deadline(1.0, clock=lambda: now[0])
        async with deadline.within("redis"):
            now[0] += 0.1
        async with deadline.within("mongodb"):
            now[0] += 0.9  # slow, but it answered
        ran = []
        with pytest.raises(StoreUnavailable) as err:
            async with deadline.within("postgresql"):
                ran.append("asked")
        assert err.value.service == "mongodb" and "postgresql not asked" in str(err.value)
        return ran

    assert asyncio.run(scenario()) == []


def test_a_limit_ends_a_call_before_the_budget_and_leaves_the_rest():
    async def scenario() -> tuple[float, float]:
        deadline = Deadline(1.0)
        start = time.monotonic()
        with pytest.raises(StoreUnavailable) as err:
            async with deadline.within("redis", limit=0.05):
                await hang()
        assert err.value.service == "redis"
        return time.monotonic() - start, deadline.remaining()

    elapsed, left = asyncio.run(scenario())
    assert 0.05 <= elapsed < 0.05 + SLACK_S and left > 0.8


def test_the_cache_share_has_a_floor():
    assert Deadline(5.0).cache_limit() == 1.0
    assert Deadline(0.5).cache_limit() == CACHE_FLOOR_S


def test_a_failed_cache_is_bypassed_for_a_while_then_tried_again():
    now = [0.0]
    guard = CacheGuard(bypass_s=5.0, clock=lambda: now[0])
    assert guard.usable()
    guard.failed()
    now[0] += 4.9
    assert not guard.usable()
    now[0] += 0.1
    assert guard.usable()
