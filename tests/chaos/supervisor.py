"""The projection workers of a chaos run and the supervisor that keeps them running, as Kubernetes
would: every exited worker is started again after a short delay. Each exit is recorded with its
cause, so the verdict can tell expected deaths (the harness's SIGKILL, a fired failpoint) from a
worker giving up by itself (a self-exit, e.g. exit code 75 while a store is down).
"""
from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.operations import processes
from agents.projections import PROJECTIONS
from tests.chaos.timeline import RunClock

HARNESS_KILL, HARNESS_STOP, FAILPOINT, SELF_EXIT = "harness-kill", "harness-stop", "failpoint", "self-exit"
POLL_S = 0.2
STOP_TIMEOUT_S = 20.0


@dataclass
class Incarnation:
    """One process of a worker slot; `ended_by` is set before the harness signals it."""

    app: processes.AppProcess
    metrics_port: int
    failpoints: str | None
    log_offset: int
    ended_by: str | None = None

    @property
    def running(self) -> bool:
        return self.app.proc.poll() is None


@dataclass
class WorkerSlot:
    """A place for one worker of a projection (what a Deployment replica is)."""

    projection: str
    index: int
    current: Incarnation | None = None
    restart_at: float | None = None        # monotonic time of the pending restart
    restart_failpoints: str | None = None   # the next incarnation is armed with these

    @property
    def name(self) -> str:
        return f"{self.projection}-{self.index}"


@dataclass(frozen=True)
class WorkerExit:
    """A worker process that ended: when, its return code, why, and which fault was active."""

    at: float
    worker: str
    returncode: int
    cause: str
    fault: str
    detail: str = ""


@dataclass
class WorkerSupervisor:
    """Starts `per_projection` workers of every projection and restarts any that exits, in a thread."""

    env: dict[str, str]
    log_dir: Path
    clock: RunClock
    rng: random.Random
    per_projection: int = 2
    restart_delay_s: tuple[float, float] = (1.0, 3.0)
    slots: list[WorkerSlot] = field(default_factory=list)
    exits: list[WorkerExit] = field(default_factory=list)
    active_fault: str = "none"
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            for projection in PROJECTIONS:
                for index in range(self.per_projection):
                    slot = WorkerSlot(projection, index)
                    self.slots.append(slot)
                    self._launch(slot, None)
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self._thread.start()

    def _launch(self, slot: WorkerSlot, failpoints: str | None) -> None:
        port = processes.free_port()
        log_path = self.log_dir / f"worker-{slot.name}.log"
        with log_path.open("a") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} start {slot.name} metrics :{port}"
                      f"{' CQRS_FAILPOINTS=' + failpoints if failpoints else ''}\n")
        offset = log_path.stat().st_size   # this incarnation's output starts here
        env = {**self.env, **({"CQRS_FAILPOINTS": failpoints} if failpoints else {})}
        app = processes.start(f"worker-{slot.name}", ["worker", slot.projection, "--metrics-port", str(port)],
                              log_dir=self.log_dir, env=env, ready_path=None)
        slot.current = Incarnation(app, port, failpoints, offset)
        slot.restart_at, slot.restart_failpoints = None, None

    def _watch(self) -> None:
        while not self._stop.wait(POLL_S):
            with self._lock:
                if self._stop.is_set():
                    return
                for slot in self.slots:
                    self._check(slot)

    def _check(self, slot: WorkerSlot) -> None:
        inc = slot.current
        if inc is not None and not inc.running:
            self._record_exit(slot, inc)
            slot.current = None
            if slot.restart_at is None:
                slot.restart_at = time.monotonic() + self.rng.uniform(*self.restart_delay_s)
        if slot.current is None and slot.restart_at is not None and time.monotonic() >= slot.restart_at:
            try:
                self._launch(slot, slot.restart_failpoints)
            except Exception as exc:  # noqa: BLE001 - a failed start is retried like a crash
                self.exits.append(WorkerExit(self.clock.now(), slot.name, -1, SELF_EXIT, self.active_fault,
                                             f"could not start: {exc}"))
                slot.restart_at = time.monotonic() + self.restart_delay_s[1]

    def _record_exit(self, slot: WorkerSlot, inc: Incarnation) -> None:
        rc = inc.app.proc.returncode
        fired = _failpoint_fired(inc)
        if inc.ended_by is not None:
            cause, detail = inc.ended_by, ""
        elif rc == -signal.SIGKILL and (fired or inc.failpoints):
            cause, detail = FAILPOINT, fired or "SIGKILL while armed"
        else:
            cause, detail = SELF_EXIT, _last_line(inc)
        self.exits.append(WorkerExit(self.clock.now(), slot.name, rc, cause, self.active_fault, detail))

    # ---- what faults do ------------------------------------------------------------------------------

    def kill(self, projection: str | None = None, rearm: str | None = None) -> str | None:
        """SIGKILL a random running worker (of `projection` if given); it restarts after the restart delay,
        armed with failpoints `rearm` if given. Returns the worker's name, None if none was running."""
        with self._lock:
            running = [s for s in self.slots if s.current is not None and s.current.running
                       and (projection is None or s.projection == projection)]
            if not running:
                return None
            slot = self.rng.choice(running)
            slot.current.ended_by = HARNESS_KILL
            slot.current.app.proc.send_signal(signal.SIGKILL)
            slot.restart_at = time.monotonic() + self.rng.uniform(*self.restart_delay_s)
            slot.restart_failpoints = rearm
            return slot.name

    def armed(self, name: str) -> bool:
        """Whether the worker `name` is (or is about to be) an armed incarnation."""
        with self._lock:
            slot = self._slot(name)
            return bool(slot.restart_failpoints if slot.current is None else slot.current.failpoints)

    def disarm(self, name: str) -> None:
        """Replace an armed incarnation that did not fire with a plain one (graceful stop, restart now)."""
        with self._lock:
            slot = self._slot(name)
            slot.restart_failpoints = None
            inc = slot.current
            if inc is not None and inc.failpoints and inc.running:
                inc.ended_by = HARNESS_STOP
                inc.app.stop(timeout=15)
                slot.restart_at = time.monotonic()

    def exits_since(self, index: int) -> list[WorkerExit]:
        with self._lock:
            return self.exits[index:]

    def restarted(self, name: str) -> bool:
        """Whether the worker `name` has a running, unarmed incarnation."""
        with self._lock:
            inc = self._slot(name).current
            return inc is not None and inc.ended_by is None and inc.running and not inc.failpoints

    def _slot(self, name: str) -> WorkerSlot:
        return next(s for s in self.slots if s.name == name)

    def readiness(self) -> str:
        """`ready/total` from the workers' optional /readyz (served on the metrics port); "n/a" if none serves it."""
        with self._lock:
            ports = [s.current.metrics_port for s in self.slots if s.current is not None and s.current.running]
        answers = []
        for port in ports:
            try:
                answers.append(httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0).status_code)
            except httpx.HTTPError:
                answers.append(None)
        if all(a in (None, 404) for a in answers):
            return "n/a"
        return f"{sum(1 for a in answers if a == 200)}/{len(self.slots)}"

    def wait_ready(self, timeout_s: float) -> bool:
        """Until every worker answers 200 on /readyz (tables restored, stores answering); bounded. Faults
        start only then: a worker that cannot reach Kafka while it starts fails fast by design, which is not
        what the suite measures."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.readiness() == f"{len(self.slots)}/{len(self.slots)}":
                return True
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        """Stop supervising, then stop every worker gracefully (SIGTERM, SIGKILL past STOP_TIMEOUT_S)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            running = [s.current for s in self.slots if s.current is not None and s.current.running]
            for inc in running:   # all at once: they leave their groups together
                inc.ended_by = HARNESS_STOP
                inc.app.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for inc in running:
                try:
                    inc.app.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    inc.app.kill()


def _log_since(inc: Incarnation) -> str:
    try:
        with inc.app.log_path.open("rb") as log:
            log.seek(inc.log_offset)
            return log.read()[-200_000:].decode(errors="replace")
    except OSError:
        return ""


def _failpoint_fired(inc: Incarnation) -> str:
    for line in reversed(_log_since(inc).splitlines()):
        if "failpoint" in line and "fired" in line:
            return line.split("failpoint", 1)[1].split("fired", 1)[0].strip() or "fired"
    return ""


def _last_line(inc: Incarnation) -> str:
    lines = [line for line in _log_since(inc).splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""
