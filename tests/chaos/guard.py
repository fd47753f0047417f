"""A watchdog for one chaos run, in its own process: if the run dies without its `finally` (SIGKILL, a
segfault in a native client library), the guard still brings the stopped services back up, stops the
run's processes and drops its isolated read models, topics and groups.

The run records what the guard needs in its run directory: `isolation.json` (run id, Redis database)
and `stopped-services` (kept by StackControl). The run's processes carry RUN_ENV=<run id> in their
environment; the guard ends only processes with that marker, by pid. A run that ends normally
terminates its guard.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT

RUN_ENV = "CQRS_CHAOS_RUN"
ISOLATION_FILE = "isolation.json"
POLL_S = 1.0
STOP_GRACE_S = 15.0


@dataclass
class Guard:
    """The watchdog process of one run."""

    proc: subprocess.Popen

    @classmethod
    def start(cls, run_dir: Path) -> Guard:
        log = (run_dir / "guard.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "tests.chaos.guard", str(os.getpid()), str(run_dir)],
                                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)   # a Ctrl-C of the run must not end its guard
        log.close()
        return cls(proc)

    def stop(self) -> None:
        """The run cleaned up after itself: the guard has nothing to do."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def record_isolation(run_dir: Path, run_id: str, redis_db: int) -> None:
    (run_dir / ISOLATION_FILE).write_text(json.dumps({"run_id": run_id, "redis_db": redis_db}))


def run_processes(run_id: str) -> list[int]:
    """The pids of live processes started by run `run_id` (found by the marker in their environment)."""
    marker = f"{RUN_ENV}={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def rescue(run_dir: Path) -> None:
    """What the run's `finally` would have done: services up, processes stopped, isolated state dropped."""
    from tests.chaos.run import drop_isolated
    from tests.chaos.stack_control import StackControl

    errors = StackControl.resume(run_dir).restore()
    print(f"services restored{': ' + '; '.join(errors) if errors else ''}", flush=True)
    try:
        isolation = json.loads((run_dir / ISOLATION_FILE).read_text())
    except (OSError, ValueError):
        print("no isolation record: nothing else started", flush=True)
        return
    started = pids = run_processes(isolation["run_id"])
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and (pids := [p for p in pids if p in run_processes(isolation["run_id"])]):
        time.sleep(0.5)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    print(f"stopped {len(started)} process(es) ({len(pids)} needed SIGKILL)", flush=True)
    drop_isolated(isolation["run_id"], isolation["redis_db"], run_dir)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def main(argv: list[str]) -> int:
    parent, run_dir = int(argv[0]), Path(argv[1])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while os.getppid() == parent:
        time.sleep(POLL_S)
    print(f"{time.strftime('%H:%M:%S')} run process {parent} is gone without cleaning up: rescuing", flush=True)
    rescue(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
