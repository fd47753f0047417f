"""What the benchmarks measure with: CPU time from Linux /proc (per process, per role, whole machine) and
the number formatting of their reports."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path


def fmt(n: float) -> str:
    return f"{n:,.0f}"


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


PROBE_LOOPS = 3_000_000


def cpu_probe(rounds: int = 3) -> float:
    """Milliseconds this machine takes for a fixed pure-Python loop, the best of `rounds` (lower is faster).

    Why: this machine's speed drifts by the hour (the same gateway code served 187 orders/s at one hour and
    290 at another), so a report carries its own yardstick and runs are compared through it, not only
    by date."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        total = 0
        for i in range(PROBE_LOOPS):
            total += i * i
        best = min(best, time.perf_counter() - started)
    return best * 1000


def probe_note() -> str:
    """The CPU probe as a report's header states it."""
    return f"CPU probe {cpu_probe():.0f} ms (lower is faster)"


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine so far (Linux /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")  # HotSpot's compiler threads (names cut at 15 bytes)
JIT = ", JIT compiling"
Snapshot = dict[int, tuple[str, int, float, float]]


def _stat_cpu(stat: str, tick: int) -> float:
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick


def jit_cpu(pid: int, tick: int) -> float:
    """CPU seconds a JVM's compiler threads have spent. A JVM compiles its hot paths for many minutes after a
    start (Elasticsearch's compiler threads took half its CPU 20 minutes in), so this part of a server's CPU
    is reported apart: it is not a cost of each order once the server has run for a while."""
    total = 0.0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                if (task / "comm").read_text().strip().startswith(JIT_THREADS):
                    total += _stat_cpu((task / "stat").read_text(), tick)
            except OSError:
                continue
    except OSError:
        return 0.0
    return total


def process_cpu() -> Snapshot:
    """{pid: (command line, start time, user + system CPU seconds, of which JVM compiler threads)} of every
    process (Linux /proc)."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        name = stat.split("(", 1)[1].rsplit(")", 1)[0]
        out[int(entry.name)] = (cmd or name, int(stat.rsplit(")", 1)[1].split()[19]), _stat_cpu(stat, tick),
                                jit_cpu(int(entry.name), tick) if name == "java" else 0.0)
    return out


def cpu_by_role(before: Snapshot, after: Snapshot, own: dict[int, str]) -> dict[str, float]:
    """CPU seconds spent between two snapshots, by what the process is (processes that ended in between
    are not counted); a JVM's compiler threads count apart, as "<role>, JIT compiling"."""
    roles: Counter = Counter()
    for pid, (cmd, started, cpu, jit) in after.items():
        same = pid in before and before[pid][1] == started
        spent = cpu - before[pid][2] if same else cpu
        compiling = jit - before[pid][3] if same else jit
        if pid in own:
            role = own[pid]
        elif pid == os.getpid():
            role = "this benchmark process"
        elif cmd.startswith("postgres:") and " ferretdb " in cmd:
            role = "PostgreSQL backends of FerretDB"
        elif "ferretdb" in cmd:
            role = "FerretDB"
        elif cmd.startswith("postgres"):
            role = "PostgreSQL, other"
        elif "org.elasticsearch" in cmd:
            role = "Elasticsearch"
        elif "kafka.Kafka" in cmd:
            role = "Kafka"
        elif "apicurio" in cmd or "quarkus" in cmd:
            role = "schema registry"
        elif "redis-server" in cmd:
            role = "Redis"
        else:
            role = "other processes (not this benchmark)"
        roles[role] += spent - compiling
        if compiling:
            roles[role + JIT] += compiling
    return dict(roles)


class BusyMeter:
    def __init__(self) -> None:
        self.start = machine_busy()

    def percent(self) -> float:
        busy, total = machine_busy()
        return 100.0 * (busy - self.start[0]) / max(1, total - self.start[1])


PY_SPY = Path(sys.executable).parent / "py-spy"
PY_SPY_MISSING = f"--profile needs py-spy, which is not installed in this environment ({PY_SPY}): pip install '.[profile]'"


def py_spy(pid: int, output: Path, log: Path, duration_s: float | None = None) -> subprocess.Popen:
    """py-spy (sampling from outside, 200 Hz) on one process, collapsed stacks into `output`; until the
    process exits, or for `duration_s`."""
    cmd = [str(PY_SPY), "record", "--pid", str(pid), "--rate", "200",
           "--format", "raw", "--nonblocking", "--output", str(output)]
    if duration_s is not None:
        cmd += ["--duration", str(max(1, round(duration_s)))]
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
