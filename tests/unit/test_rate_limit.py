"""The token bucket's arithmetic (the in-process fallback; the Redis script does the same sums)."""
from __future__ import annotations

import pytest

from app.http.rate_limit import TokenBucket


def test_a_burst_is_admitted_then_the_rate_and_the_wait_until_the_next_token():
    bucket = TokenBucket(rate=2.0, burst=3, tokens=3, at=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) == pytest.approx(0.5)


def test_an_idle_caller_earns_back_at_most_the_burst():
    bucket = TokenBucket(rate=10.0, burst=2, tokens=0, at=0.0)
    assert [bucket.take(100.0) for _ in range(3)][:2] == [0.0, 0.0]
    assert bucket.tokens == pytest.approx(0.0)
