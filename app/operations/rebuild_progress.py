"""How `cqrs rebuild` shows its progress: a live bar in a terminal, plain lines otherwise (logs, CI)."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

PLAIN_EVERY_S = 5.0


def duration(seconds: float) -> str:
    """`42s`, `3m05s`, `1h02m`."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(label: str, done: int, total: int, rate: float) -> str:
    """One plain progress line: events done of total, percentage, rate and the time left at that rate."""
    pct = 100.0 * done / total if total else 100.0
    left = max(0, total - done)
    eta = duration(left / rate) if rate > 0 else "-"
    return f"{label}: {done:,}/{total:,} events ({pct:.1f}%), {rate:,.0f} events/s, ETA {eta}"


class RebuildProgress:
    """Progress of one phase: `start(label, total)`, `update(done)` as often as convenient, `finish()`."""

    def __init__(self, out: TextIO = sys.stdout, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, every_s: float = PLAIN_EVERY_S) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.clock = clock
        self.every_s = every_s
        self._bar = None
        self._task = None
        self._label = ""
        self._total = 0
        self._started = 0.0
        self._last_line = 0.0
        self.done = 0

    def say(self, message: str) -> None:
        if self._bar is not None:
            self._bar.console.print(message, highlight=False, markup=False)
        else:
            print(message, file=self.out, flush=True)

    def start(self, label: str, total: int) -> None:
        self._label, self._total, self.done = label, total, 0
        self._started = self._last_line = self.clock()
        if self.tty:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                                       TimeRemainingColumn)
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TaskProgressColumn(), TextColumn("{task.fields[rate]} events/s"),
                                 TextColumn("ETA"), TimeRemainingColumn(),
                                 console=Console(file=self.out), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(label, total=max(total, 1), rate="-")
        else:
            self.say(progress_line(label, 0, total, 0.0))

    @property
    def rate(self) -> float:
        elapsed = self.clock() - self._started
        return self.done / elapsed if elapsed > 0 else 0.0

    def update(self, done: int) -> None:
        self.done = done
        if self._bar is not None:
            self._bar.update(self._task, completed=min(done, self._total), rate=f"{self.rate:,.0f}")
        elif self.clock() - self._last_line >= self.every_s:
            self._last_line = self.clock()
            self.say(progress_line(self._label, done, self._total, self.rate))

    def finish(self) -> float:
        """End the phase; returns its duration in seconds."""
        elapsed = self.clock() - self._started
        if self._bar is not None:
            self._bar.update(self._task, completed=max(self._total, 1), rate=f"{self.rate:,.0f}")
            self._bar.stop()
            self._bar = None
        self.say(f"{self._label}: done, {self.done:,} events in {duration(elapsed)} "
                 f"({self.rate:,.0f} events/s)")
        return elapsed
