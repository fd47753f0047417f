"""One clock for a run, so fault start times, worker exits and recoveries line up in the report."""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RunClock:
    """Seconds since the run started (monotonic), and the wall-clock time of any such offset."""

    started_monotonic: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)

    def now(self) -> float:
        return time.monotonic() - self.started_monotonic

    def wall(self, offset: float) -> str:
        return time.strftime("%H:%M:%S", time.localtime(self.started_wall + offset))
