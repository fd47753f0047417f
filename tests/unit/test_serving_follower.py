"""Which serving version a live worker writes to while MongoDB, where the pointer lives, is away."""
from __future__ import annotations

import asyncio

import pytest
from pymongo.errors import OperationFailure, ServerSelectionTimeoutError

from agents.read_model_versions import ServingRecord
from agents.worker import ServingFollower


class Pointer:
    """The versions collection as the follower sees it: `find_one` answers `doc` or raises `error`."""

    def __init__(self, doc: dict | None) -> None:
        self.doc, self.error, self.reads = doc, None, 0

    async def find_one(self, query: dict) -> dict | None:
        self.reads += 1
        if self.error is not None:
            raise self.error
        return self.doc


class Projection:
    name = "product-search"

    def __init__(self) -> None:
        self.targets: list[int] = []

    async def target_serving(self, record: ServingRecord) -> None:
        self.targets.append(record.serving)


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def follow(follower: ServingFollower) -> None:
    asyncio.run(follower.follow())


def test_the_last_version_read_is_kept_while_mongodb_is_away_and_no_rebuild_runs():
    pointer, projection, clock = Pointer({"_id": "product-search", "serving": 3}), Projection(), Clock()
    follower = ServingFollower(projection, pointer, clock)
    follow(follower)
    pointer.error = ServerSelectionTimeoutError("no servers")
    follow(follower)
    follow(follower)
    assert projection.targets == [3, 3, 3]
    assert pointer.reads == 2, "the pointer is not asked again within RETRY_POINTER_S of a failure"
    clock.now += ServingFollower.RETRY_POINTER_S
    pointer.error, pointer.doc = None, {"_id": "product-search", "serving": 4}
    follow(follower)
    assert projection.targets[-1] == 4


def test_with_a_rebuild_in_progress_the_worker_waits_for_the_pointer():
    pointer = Pointer({"_id": "product-search", "serving": 1, "building": {"version": 2}})
    follower = ServingFollower(Projection(), pointer, Clock())
    follow(follower)
    pointer.error = ServerSelectionTimeoutError("no servers")
    with pytest.raises(ServerSelectionTimeoutError):
        follow(follower)


def test_a_pointer_never_read_or_a_failure_that_is_no_outage_is_raised():
    pointer = Pointer(None)
    pointer.error = ServerSelectionTimeoutError("no servers")
    with pytest.raises(ServerSelectionTimeoutError):
        follow(ServingFollower(Projection(), pointer, Clock()))
    pointer = Pointer(None)
    follower = ServingFollower(Projection(), pointer, Clock())
    follow(follower)
    pointer.error = OperationFailure("unauthorized")
    with pytest.raises(OperationFailure):
        follow(follower)
