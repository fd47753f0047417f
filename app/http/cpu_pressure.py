"""Whether a process is short of CPU through its own work: its event loop runs timers late while the
process itself keeps a share of a core busy.

A request can be slow for reasons that call for opposite answers. Waiting on a store that is down or slow
leaves the loop idle and on time: admitting fewer would only shed work the machine could do. A loop
running late while this process does little is a machine busy with something else (a store restarting on
the same cores): shedding this process's few requests frees almost nothing. Only a late loop in a busy
process — ready work queued here, for a core this process competes for with the work it causes — is
relieved by admitting fewer. Admission (app/http/admission.py) lowers its limit for slow answers only then.

A timer fires every TICK_S; each firing measures how long after its due time it ran, and a firing later
than the threshold marks the loop late for HOLD_S. The process's CPU time (all its threads) is sampled
every WINDOW_S. Gauges: `event_loop_lateness_seconds{service}` (the latest measure) and
`process_cpu_share{service}` (cores used over the latest window). Cost: one callback per TICK_S.
"""
from __future__ import annotations

import asyncio
import time

from prometheus_client import Gauge

TICK_S = 0.02
HOLD_S = 1.0
WINDOW_S = 1.0

LATENESS = Gauge("event_loop_lateness_seconds", "How late the event loop ran its latest timer", ["service"])
CPU_SHARE = Gauge("process_cpu_share", "Cores the process used over the latest second (all threads)", ["service"])


class CpuPressure:
    """`short_of_cpu(now)`: a timer ran more than `late_s` late within HOLD_S before `now`, and the process
    used at least `busy_cores` over the latest WINDOW_S. Measures the loop that first calls `watch`; moves
    to a new loop if the process's loop is replaced (as tests do) and stops with its loop."""

    def __init__(self, late_s: float, busy_cores: float, service: str) -> None:
        self.late_s, self.busy_cores = late_s, busy_cores
        self.late_until = float("-inf")
        self.share = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.due = 0.0
        self.window = (time.monotonic(), time.process_time())
        self.lateness_gauge = LATENESS.labels(service=service)
        self.share_gauge = CPU_SHARE.labels(service=service)

    def watch(self) -> None:
        """Start measuring on the running loop, unless already measuring there."""
        loop = asyncio.get_running_loop()
        if loop is not self.loop:
            self.loop = loop
            now = time.monotonic()
            self.window = (now, time.process_time())
            self._schedule(now)

    def late(self, now: float) -> bool:
        """Whether a timer ran more than `late_s` late within HOLD_S before `now` (time.monotonic)."""
        return now < self.late_until

    def short_of_cpu(self, now: float) -> bool:
        return self.late(now) and self.share >= self.busy_cores

    def _schedule(self, now: float) -> None:
        assert self.loop is not None
        self.due = now + TICK_S
        self.loop.call_later(TICK_S, self._tick, self.loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self.loop or loop.is_closed():
            return
        now = time.monotonic()
        lateness = max(0.0, now - self.due)
        self.lateness_gauge.set(lateness)
        if lateness > self.late_s:
            self.late_until = now + HOLD_S
        since, cpu_then = self.window
        if now - since >= WINDOW_S:
            cpu = time.process_time()
            self.share = (cpu - cpu_then) / (now - since)
            self.share_gauge.set(self.share)
            self.window = (now, cpu)
        self._schedule(now)
