"""Liveness of Faust's table restore.

After every rebalance Faust restores a worker's tables from their changelogs before its agent gets a record.
A Kafka restart in the middle of that restore has left it waiting for changelog records that never came
(the fault suite saw no record for a minute while Kafka was back and answering), and the worker's stall
check only noticed after twice `worker_stall_s` (41 s). This check exits (crash-only) once a restore
has not moved for `worker_restore_stall_s` while Kafka answers: a fresh process restores in seconds.
While Kafka does not answer, a restore that does not move is an outage, waited out like any other.
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol


class Restore(Protocol):
    """What the check reads of Faust's Recovery service (its public attributes)."""

    in_recovery: bool

    def active_remaining_total(self) -> int: ...


@dataclass
class RestoreWatch:
    """Call `check` periodically; it calls `stalled` (which does not return) when the restore is stuck."""

    restore: Callable[[], Restore]   # read at each check: Faust makes its Recovery service when it starts
    kafka_answers: Callable[[], Awaitable[bool]]
    stalled: Callable[[str], None]
    stall_s: float
    clock: Callable[[], float] = time.monotonic
    _remaining: int | None = field(default=None, init=False)
    _since: float = field(default=0.0, init=False)

    async def check(self) -> None:
        restore = self.restore()
        if not restore.in_recovery:
            self._remaining = None
            return
        now, remaining = self.clock(), restore.active_remaining_total()
        if remaining != self._remaining:
            self._remaining, self._since = remaining, now
            return
        if now - self._since < self.stall_s:
            return
        if not await self.kafka_answers():
            self._since = now   # an outage: the time Kafka is away does not count
            return
        self.stalled(f"table restore stalled: {remaining} changelog records to read, none read for "
                     f"{now - self._since:.0f}s while Kafka answers")
