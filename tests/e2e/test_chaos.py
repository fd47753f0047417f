"""The short fault-injection run (tests/chaos, `python -m tests.chaos --short`) as a test: under open-loop
command traffic a worker is SIGKILLed and restarted armed with failpoints (it kills itself after a batch's
sink writes or between two stores of one batch), Kafka restarts, and MongoDB, Elasticsearch and Redis each
go away for ~8 s. Afterwards every read model — and every cached answer of the query API — equals the
write model, no command was answered 5xx, and no worker gave up (exited by itself) while a store was down.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.chaos.config import SHORT
from tests.chaos.run import run_chaos


@pytest.mark.timeout(900)  # bounded inside; ~3-5 min on 2 shared cores (Elasticsearch restarts in 25-75 s)
def test_short_chaos_run_loses_nothing_and_fails_no_command(tmp_path: Path) -> None:
    result = run_chaos(replace(SHORT, run_dir=tmp_path / "chaos"))
    table = result.render()
    print(table)
    assert result.aborted is None, table
    assert not result.restore_errors, table
    assert {m: n for m, n in result.mismatches.counts.items() if n} == {}, table
    assert result.traffic.commands["5xx"] == 0 and result.traffic.commands["error"] == 0, table
    assert result.outage_self_exits == 0, table
