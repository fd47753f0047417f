"""A worker's progress report in real Redis: what it writes, and that a Redis that is away costs one
bounded wait and then nothing while reporting pauses."""
from __future__ import annotations

import asyncio
import socket
import time
import uuid

from agents.dead_letters import SourceRecord
from agents.progress_report import ProgressReport
from app.settings import Settings
from connectors import redis
from connectors.redis import BestEffort
from domain.freshness import PartitionReport, progress_field, progress_key


def record(partition: int, offset: int, timestamp: float) -> SourceRecord:
    return SourceRecord("orders", partition, offset, b"k", b"v", [], timestamp)


def test_reports_what_is_applied_and_not_what_the_gate_holds(stack: Settings) -> None:
    group = f"progress-test-{uuid.uuid4().hex[:8]}"
    applied = {("orders", 0): 12, ("orders", 1): 5}

    async def main() -> dict[str, str]:
        client = redis.async_redis_client(stack)
        try:
            report = ProgressReport(client, group, applied.get, {("orders", 0): 20, ("orders", 1): 5}.get,
                                    clock=lambda: 1_000.0)
            # offset 12 of partition 0 is held (not applied): its timestamp must not count
            await report.after_batch([record(0, 10, 900.0), record(0, 11, 910.0), record(0, 12, 990.0),
                                      record(1, 4, 950.0)])
            return await client.hgetall(progress_key(group))
        finally:
            await client.delete(progress_key(group))
            await client.aclose()

    stored = {field: PartitionReport.loads(raw) for field, raw in asyncio.run(main()).items()}
    assert stored == {progress_field("orders", 0): PartitionReport(12, 20, 1_000.0, 910.0),
                      progress_field("orders", 1): PartitionReport(5, 5, 1_000.0, 950.0)}


def test_an_unreachable_redis_costs_one_bounded_wait_then_nothing(stack: Settings) -> None:
    with socket.socket() as listener:  # accepts connections and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        silent = Settings(redis_url=f"redis://127.0.0.1:{listener.getsockname()[1]}/0")

        async def main() -> tuple[float, float]:
            client = redis.async_redis_client(silent)
            report = ProgressReport(client, "progress-silent", lambda tp: 1, lambda tp: 1)
            try:
                started = time.monotonic()
                await report.publish([("orders", 0)])
                first = time.monotonic() - started
                started = time.monotonic()
                for _ in range(100):
                    await report.publish([("orders", 0)])
                return first, time.monotonic() - started
            finally:
                await client.aclose()

        first, next_hundred = asyncio.run(main())
    assert first < BestEffort("bound").timeout_s + 0.3 and next_hundred < 0.05


def test_an_empty_partition_is_reported_caught_up_and_an_unstarted_one_not_at_all(stack: Settings) -> None:
    group = f"progress-test-{uuid.uuid4().hex[:8]}"
    applied = {("orders", 0): None, ("orders", 1): None}
    heads = {("orders", 0): 0, ("orders", 1): 7}

    async def main() -> dict[str, str]:
        client = redis.async_redis_client(stack)
        try:
            report = ProgressReport(client, group, applied.get, heads.get, clock=lambda: 500.0)
            await report.publish([("orders", 0), ("orders", 1)])
            return await client.hgetall(progress_key(group))
        finally:
            await client.delete(progress_key(group))
            await client.aclose()

    stored = {field: PartitionReport.loads(raw) for field, raw in asyncio.run(main()).items()}
    assert stored == {progress_field("orders", 0): PartitionReport(0, 0, 500.0, None)}
