"""Stopping and starting one service of the local stack, the way an operator does
(`deploy/local/stack down|up SERVICE`), remembering what is down so a run always brings it back — in
memory and in the run directory (`stopped-services`), where the run's guard finds it if the run dies.

The stack is shared with other people's work: this module only ever names one service at a time and
never runs `down` without one.
"""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ROOT, STACK

KNOWN = ("postgres", "redis", "kafka", "elasticsearch", "ferretdb", "registry")
DOWN_TIMEOUT_S = 60.0
UP_TIMEOUT_S = 300.0
STATE_FILE = "stopped-services"


class StackCommandFailed(RuntimeError):
    """`deploy/local/stack` exited non-zero (or did not finish in time)."""


@dataclass
class StackControl:
    """Runs `deploy/local/stack down|up <service>`, logs its output to `<run_dir>/stack.log` and tracks
    what is down."""

    run_dir: Path
    stopped: list[str] = field(default_factory=list)

    @classmethod
    def resume(cls, run_dir: Path) -> StackControl:
        """The control of a run that died: what it had stopped, read back from its run directory."""
        try:
            stopped = json.loads((run_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            stopped = []
        return cls(run_dir, [s for s in stopped if s in KNOWN])

    @property
    def log_path(self) -> Path:
        return self.run_dir / "stack.log"

    def _save(self) -> None:
        tmp = self.run_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(self.stopped))
        tmp.replace(self.run_dir / STATE_FILE)

    def _run(self, action: str, service: str, timeout: float) -> float:
        if service not in KNOWN:
            raise ValueError(f"unknown stack service {service!r}")
        started = time.monotonic()
        with self.log_path.open("a") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} stack {action} {service}\n")
            log.flush()
            try:
                proc = subprocess.run([str(STACK), action, service], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise StackCommandFailed(f"stack {action} {service}: no result after {timeout:.0f}s") from None
        if proc.returncode != 0:
            raise StackCommandFailed(f"stack {action} {service} exited {proc.returncode}; see {self.log_path}")
        return time.monotonic() - started

    def down(self, service: str) -> float:
        """Stop `service` (recorded as down before the command runs, so a failure still restores it);
        returns how long stopping took."""
        if service not in self.stopped:
            self.stopped.append(service)
            self._save()
        return self._run("down", service, DOWN_TIMEOUT_S)

    def up(self, service: str) -> float:
        """Start `service` and wait until the stack reports it healthy; returns how long that took."""
        took = self._run("up", service, UP_TIMEOUT_S)
        if service in self.stopped:
            self.stopped.remove(service)
            self._save()
        return took

    def restore(self) -> list[str]:
        """Bring every service this run stopped back up; returns the errors (empty when all came back)."""
        errors = []
        for service in list(self.stopped):
            try:
                self.up(service)
            except StackCommandFailed as exc:
                errors.append(str(exc))
        return errors
