"""Waiting for one's own write: woken by an announcement of the partition, bounded, never polling."""
from __future__ import annotations

import asyncio
import time

from app.queries.own_writes import Announcements, until_reflected


def test_an_announcement_wakes_the_reader_at_once() -> None:
    async def main() -> tuple[int, float, list[int]]:
        announcements = Announcements(redis=None, channels=["progress:g"])
        view = {"version": 1}
        reads: list[int] = []

        async def read() -> dict:
            reads.append(view["version"])
            return dict(view)

        async def projection() -> None:
            await asyncio.sleep(0.2)
            view["version"] = 2
            announcements.announce("progress:g", "orders:3")

        started = time.monotonic()
        writer = asyncio.create_task(projection())
        answer, reflected = await until_reflected(read, lambda v: v["version"] >= 2,
                                                  lambda: [announcements.arm("progress:g", "orders:3")], 5.0)
        await writer
        assert reflected
        return answer["version"], time.monotonic() - started, reads

    version, took, reads = asyncio.run(main())
    assert version == 2 and 0.2 <= took < 1.0
    assert reads == [1, 2]  # read once, woken once: no polling


def test_other_partitions_do_not_wake_the_reader_and_the_wait_is_bounded() -> None:
    async def main() -> tuple[bool, float, int]:
        announcements = Announcements(redis=None, channels=["progress:g"])
        reads = 0

        async def read() -> int:
            nonlocal reads
            reads += 1
            return 1

        async def elsewhere() -> None:
            for _ in range(5):
                await asyncio.sleep(0.02)
                announcements.announce("progress:g", "orders:4")

        started = time.monotonic()
        noise = asyncio.create_task(elsewhere())
        _, reflected = await until_reflected(read, lambda v: v >= 2,
                                             lambda: [announcements.arm("progress:g", "orders:3")], 0.3)
        await noise
        return reflected, time.monotonic() - started, reads

    reflected, took, reads = asyncio.run(main())
    assert not reflected and 0.3 <= took < 0.6 and reads == 2  # before the wait, and once more at its end


def test_an_announcement_between_read_and_wait_is_not_lost() -> None:
    async def main() -> tuple[bool, float]:
        announcements = Announcements(redis=None, channels=["c"])
        version = 1

        async def read() -> int:
            nonlocal version
            current = version
            version = 2  # the projection writes right after this read, and announces before the wait
            announcements.announce("c", "p")
            return current

        started = time.monotonic()
        _, reflected = await until_reflected(read, lambda v: v >= 2, lambda: [announcements.arm("c", "p")], 5.0)
        return reflected, time.monotonic() - started

    reflected, took = asyncio.run(main())
    assert reflected and took < 0.5
