"""The result of one chaos run, its verdict, and the one table printed at the end.

Verdict (exit status 0 only if all hold): no read model differs from the write model, no command was
answered 5xx (or not at all), no worker exited by itself while a store was down, and every fault
recovered within the limit.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.config import ChaosConfig
from tests.chaos.faults import FaultResult
from tests.chaos.supervisor import FAILPOINT, HARNESS_KILL, SELF_EXIT, WorkerExit
from tests.chaos.traffic import TrafficStats, percentile
from tests.e2e.pipeline import Mismatches


@dataclass
class ChaosResult:
    """Everything a run measured; `failures()` lists why it did not pass."""

    config: ChaosConfig
    run_dir: Path
    faults: list[FaultResult] = field(default_factory=list)
    traffic: TrafficStats = field(default_factory=TrafficStats)
    exits: list[WorkerExit] = field(default_factory=list)
    mismatches: Mismatches = field(default_factory=Mismatches)
    final_catch_up_s: float | None = None
    final_lag: str = ""                 # which groups were still behind when the final catch-up timed out
    total_s: float = 0.0
    aborted: str | None = None
    restore_errors: list[str] = field(default_factory=list)

    def _count(self, cause: str) -> int:
        return sum(1 for e in self.exits if e.cause == cause)

    @property
    def worker_kills(self) -> int:
        return self._count(HARNESS_KILL)

    @property
    def failpoint_kills(self) -> int:
        return self._count(FAILPOINT)

    @property
    def self_exits(self) -> int:
        return self._count(SELF_EXIT)

    @property
    def outage_self_exits(self) -> int:
        return sum(1 for e in self.exits if e.cause == SELF_EXIT and e.fault.startswith("outage"))

    def failures(self) -> list[str]:
        reasons = []
        if self.aborted:
            reasons.append(f"run aborted: {self.aborted}")
        if self.mismatches.total:
            reasons.append(f"{self.mismatches.total} read-model mismatch(es)")
        if self.traffic.failed:
            reasons.append(f"{self.traffic.failed} command(s) answered 5xx or not at all")
        if self.outage_self_exits:
            reasons.append(f"{self.outage_self_exits} worker self-exit(s) during store outages")
        # The limit is for a store's (or Kafka's) return; a killed worker's partitions move only after the
        # group's session timeout, so kills are reported, and must recover, but are not held to it.
        slow = [f.name for f in self.faults if f.recovery_s is None or (
            f.recovery_s > self.config.recovery_limit_s and f.name.startswith(("outage", "kafka")))]
        if slow:
            reasons.append(f"not recovered within {self.config.recovery_limit_s:.0f}s: {', '.join(slow)}")
        if self.final_catch_up_s is None and not self.aborted:
            reasons.append("projections did not catch up after the traffic stopped")
        reasons += [f"not restored: {e}" for e in self.restore_errors]
        return reasons

    @property
    def passed(self) -> bool:
        return not self.failures()

    def render(self) -> str:
        return "\n".join(_render(self))


def _secs(value: float | None, missing: str = "-") -> str:
    return f"{value:.1f}s" if value is not None else missing


def _exit_status(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"rc {returncode}"


def _render(r: ChaosResult) -> list[str]:
    c, t = r.config, r.traffic
    rows = [("fault", "start", "at", "duration", "up", "recovery", "self-exits", "ready", "note")]
    for f in r.faults:
        rows.append((f.name, f.wall, f"+{f.start_s:.0f}s", _secs(f.duration_s), _secs(f.up_s),
                     _secs(f.recovery_s, "NOT RECOVERED"), str(f.self_exits), f.ready or "-", f.note))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    out = [f"== chaos run ({c.label}, seed {c.seed}, {c.rate:g} commands/s, outages {c.outage_s:g}s) "
           f"- logs in {r.run_dir}"]
    out += ["  ".join(col.ljust(widths[i]) for i, col in enumerate(row[:-1])) + "  " + row[-1] for row in rows]
    unattributed = sum(1 for e in r.exits if e.cause == SELF_EXIT and e.fault == "none")
    out += [
        "-- totals",
        f"commands sent       {t.sent}  (2xx {t.commands['2xx']}, refused 4xx {t.commands['refused']}, "
        f"other 4xx {t.commands['4xx']}, 5xx {t.commands['5xx']}, no answer {t.commands['error']}; "
        f"shed {t.shed}, sent again after 503 overloaded {t.overloaded_retries}, late {t.late}, max delay {t.max_delay_s:.2f}s; latency p50 "
        f"{percentile(t.latencies_s, 0.5) * 1000:.0f}ms p99 {percentile(t.latencies_s, 0.99) * 1000:.0f}ms)",
        f"query reads         {sum(t.reads.values())}  (2xx {t.reads['2xx']}, "
        f"4xx {t.reads['4xx'] + t.reads['refused']}, 5xx {t.reads['5xx']}, no answer {t.reads['error']})",
        f"worker kills        {r.worker_kills}   failpoint kills {r.failpoint_kills}   self-exits {r.self_exits} "
        f"(during store outages {r.outage_self_exits}, outside any fault {unattributed})",
        f"final catch-up      {_secs(r.final_catch_up_s, 'NOT caught up: ' + r.final_lag)}   run {r.total_s:.0f}s",
        "-- mismatches per read model",
    ]
    for model, count in r.mismatches.counts.items():
        examples = r.mismatches.examples.get(model, [])
        ids = ", ".join(e.split(":", 1)[0] for e in examples)
        first = examples[0].split(":", 1)[-1].strip()[:160] if examples else ""
        out.append(f"{model:<19} {count:>5}" + (f"  ids {ids}; first: {first}" if examples else ""))
    out += [f"example failure     {f}" for f in t.failures]
    self_exits = [e for e in r.exits if e.cause == SELF_EXIT][:5]
    out += [f"self-exit           +{e.at:.0f}s {e.worker} {_exit_status(e.returncode)} during {e.fault}: "
            f"{e.detail[:160]}" for e in self_exits]
    failures = r.failures()
    out.append("verdict             " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
    return out
