"""The faults of a run: which ones, in what order, how each is injected, and how its recovery is measured.

Faults run one at a time. Each ends when the system is "back" (the killed worker restarted, the stopped
service reported healthy by `deploy/local/stack up`); its recovery time is from then until every
projection's consumer group has committed, on every partition, the end offset that partition had at
that moment. While a fault is active (injection and recovery), worker exits are attributed to it.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from agents.projections import PROJECTIONS
from tests.chaos.config import ChaosConfig
from tests.chaos.progress import GroupProgress
from tests.chaos.stack_control import StackControl
from tests.chaos.supervisor import FAILPOINT, HARNESS_KILL, SELF_EXIT, WorkerSupervisor
from tests.chaos.timeline import RunClock

RESTART_WAIT_S = 15.0


@dataclass(frozen=True)
class FaultSpec:
    """A fault to inject: `kill`, `failpoint` (target: the CQRS_FAILPOINTS value), `kafka-restart` or
    `outage` (target: the stack service)."""

    kind: str
    target: str | None = None

    @property
    def name(self) -> str:
        if self.kind == "failpoint":
            return "failpoint " + "+".join(p.split(":")[0] for p in (self.target or "").split(","))
        return f"outage {self.target}" if self.kind == "outage" else self.kind


@dataclass
class FaultResult:
    """What one fault did and how the pipeline took it."""

    name: str
    start_s: float
    wall: str
    duration_s: float = 0.0
    up_s: float | None = None          # how long `stack up` took (outages, Kafka restart)
    recovery_s: float | None = None    # None: not recovered within the timeout
    self_exits: int = 0
    note: str = ""
    ready: str = ""


def plan(config: ChaosConfig) -> list[FaultSpec]:
    """Failpoint faults alternate with the Kafka restart and the store outages; plain kills go in between."""
    if config.combine_failpoints:
        armed = [FaultSpec("failpoint", ",".join(config.failpoints))] if config.failpoints else []
    else:
        armed = [FaultSpec("failpoint", p) for p in config.failpoints]
    infra = [FaultSpec("kafka-restart")] * config.kafka_restarts + [FaultSpec("outage", s) for s in config.stores]
    sequence: list[FaultSpec] = []
    for i in range(max(len(armed), len(infra))):
        sequence += armed[i:i + 1] + infra[i:i + 1]
    for k in range(config.kills):
        sequence.insert(min(len(sequence), 2 * k), FaultSpec("kill"))
    return [f for f in sequence if not config.only or f.kind in config.only]


def failpoint_projection(spec: str, rng: random.Random) -> str:
    """A projection whose worker reaches the armed points: the one a point names, else any."""
    named = [p for p in PROJECTIONS if any(point.startswith(p + ".") for point in spec.split(","))]
    return rng.choice(named or list(PROJECTIONS))


@dataclass
class FaultRunner:
    """Injects faults into the running pipeline and measures each one's recovery."""

    config: ChaosConfig
    supervisor: WorkerSupervisor
    stack: StackControl
    progress: GroupProgress
    clock: RunClock
    rng: random.Random
    say: Callable[[str], None] = print

    def run(self, spec: FaultSpec) -> FaultResult:
        result = FaultResult(spec.name, self.clock.now(), self.clock.wall(self.clock.now()))
        first_exit = len(self.supervisor.exits)
        self.supervisor.active_fault = spec.name
        self.say(f"[{result.start_s:6.1f}s] {spec.name}: start")
        try:
            inject: dict[str, Callable[[FaultSpec, FaultResult], None]] = {
                "kill": self._kill, "failpoint": self._failpoint, "kafka-restart": self._kafka_restart,
                "outage": self._outage}
            inject[spec.kind](spec, result)
            result.duration_s = self.clock.now() - result.start_s
            result.recovery_s = self.progress.wait_caught_up(self.config.recovery_timeout_s)
            if result.recovery_s is None:
                result.note = f"{result.note}; {self.progress.describe_lag()}".lstrip("; ")
            result.ready = self.supervisor.readiness()
        finally:
            self.supervisor.active_fault = "none"
            result.self_exits = sum(1 for e in self.supervisor.exits_since(first_exit) if e.cause == SELF_EXIT)
        recovered = f"recovered in {result.recovery_s:.1f}s" if result.recovery_s is not None else "NOT recovered"
        self.say(f"[{self.clock.now():6.1f}s] {spec.name}: {recovered}; {result.self_exits} self-exit(s) "
                 f"{result.note}".rstrip())
        return result

    def _await_restart(self, worker: str) -> bool:
        deadline = time.monotonic() + RESTART_WAIT_S
        while time.monotonic() < deadline:
            if self.supervisor.restarted(worker):
                return True
            time.sleep(0.1)
        return False

    def _kill(self, spec: FaultSpec, result: FaultResult) -> None:
        worker = self.supervisor.kill()
        result.note = f"SIGKILL {worker}" if worker else "no worker running"
        if worker and not self._await_restart(worker):
            result.note += ", not restarted"

    def _failpoint(self, spec: FaultSpec, result: FaultResult) -> None:
        """SIGKILL a worker of a projection that reaches the points, restart it armed, wait (bounded) for it
        to kill itself at one of them, then let the supervisor restart it plain."""
        worker = self.supervisor.kill(failpoint_projection(spec.target or "", self.rng), rearm=spec.target)
        if worker is None:
            result.note = "no worker running"
            return
        first = len(self.supervisor.exits)
        deadline = time.monotonic() + self.config.restart_delay_s[1] + self.config.failpoint_window_s
        ended = None
        while ended is None and time.monotonic() < deadline:
            ended = next((e for e in self.supervisor.exits_since(first)
                          if e.worker == worker and e.cause != HARNESS_KILL), None)
            time.sleep(0.1)
        if ended is None:
            self.supervisor.disarm(worker)
            result.note = f"{worker}: armed, did not fire within {self.config.failpoint_window_s:.0f}s"
        elif ended.cause == FAILPOINT:
            result.note = f"{worker}: fired {ended.detail}"
        else:
            result.note = f"{worker}: armed, ended by {ended.cause} rc {ended.returncode}"
        if not self._await_restart(worker):
            result.note += ", not restarted"

    def _kafka_restart(self, spec: FaultSpec, result: FaultResult) -> None:
        down_s = self.stack.down("kafka")
        result.up_s = self.stack.up("kafka")
        result.note = f"down took {down_s:.1f}s"

    def _outage(self, spec: FaultSpec, result: FaultResult) -> None:
        service = spec.target or ""
        down_s = self.stack.down(service)
        time.sleep(self.config.outage_s)
        result.up_s = self.stack.up(service)
        result.note = f"down {self.config.outage_s:.0f}s (stopping took {down_s:.1f}s)"
