"""The report of `make bench-projections`: the figures, the CPU split and each target met or missed.
A method of the benchmark run."""
from __future__ import annotations

import os

from benchmarks.measures import fmt, rate
from benchmarks.projection_run import Loaded

TARGET_FRACTION_OF_CEILING = 0.7
TARGET_TIMES_NAIVE = 20
TARGET_PER_WORKER = 8000


class Report:
    def report(self, loaded: Loaded) -> bool:
        """Print (a)-(d) and the summary against the targets; False if a correctness check failed."""
        ok = self.report_pipeline()
        naive = self.report_naive()
        self.report_ceilings()
        self.report_bare_consumers()
        self.report_targets(naive)
        return ok

    def report_pipeline(self) -> bool:
        """(a) with the correctness checks; False if one failed."""
        res = self.results
        ok = True
        print()
        print("(a) pipeline, end to end into every sink (time from the group's partition assignment to the "
              "commit of its topics' end offsets):")
        for name, run in res.projections.items():
            status = "" if run.done_at else "  NOT CAUGHT UP"
            print(f"  {name:<15} {fmt(run.events):>8} events in {run.seconds:6.1f}s = {fmt(run.events_per_s):>6} "
                  f"events/s; {run.batches[0]} batches of {run.batches[1]:.0f} on average; worker CPU "
                  f"{run.cpu_s:.1f}s ({fmt(rate(run.events, run.cpu_s))} events per CPU second){status}")
        if res.overall:
            events, seconds = res.overall
            print(f"  overall         {fmt(events):>8} events (order + product; no projection reads "
                  f"customer-events) in every sink in {seconds:.1f}s = {fmt(rate(events, seconds))} events/s; "
                  f"{res.pipeline_wall_s:.1f}s from launch; machine CPU {res.pipeline_busy_pct:.0f}% busy")
        if res.pipeline_cpu:
            window = (os.cpu_count() or 1) * res.pipeline_wall_s
            print(f"  CPU while the pipeline ran ({os.cpu_count()} cores x {res.pipeline_wall_s:.0f}s = {window:.0f} "
                  "core-seconds): " + ", ".join(f"{role} {sec:.0f}s ({100 * sec / window:.0f}%)" for role, sec in
                                                sorted(res.pipeline_cpu.items(), key=lambda kv: -kv[1]) if sec >= 0.5))
        for what, good, detail in res.checks:
            ok &= good
            print(f"  {'ok  ' if good else 'FAIL'} {what}: {detail}")
        print("  enrichment: one write-model query per batch; it finds none of the generated products or "
              "customers (the write model is left clean), so names in the views are null")
        return ok

    def report_naive(self) -> float | None:
        """(b); returns the events per second of both naive projections together, the target's yardstick."""
        res = self.results
        print("(b) naive baseline, in process, one event at a time, one write per event "
              f"(first {fmt(self.args.naive)} order events):")
        for label, (n, s) in res.naive.items():
            print(f"  {label:<42} {fmt(rate(n, s)):>6} events/s ({n} in {s:.1f}s)")
        naive = None
        if res.naive:
            n_total = next(iter(res.naive.values()))[0]
            naive = rate(n_total, sum(s for _, s in res.naive.values()))
            print(f"  {'both (order-events into all its sinks)':<42} {fmt(naive):>6} events/s")
        return naive

    def report_ceilings(self) -> None:
        print(f"(c) sink ceilings, batches of 1,000, no pipeline (each at most {self.args.ceiling_seconds:.0f}s):")
        for label, (n, s, unit) in self.results.ceilings.items():
            print(f"  {label:<55} {fmt(rate(n, s)):>7} {unit}/s ({fmt(n)} in {s:.1f}s)")

    def report_bare_consumers(self) -> None:
        res = self.results
        print("(d) bare consumers of the order-events bench topic (decode + count):")
        if res.faust:
            n, s, wall = res.faust
            print(f"  Faust agent (take_events {self.settings.projection_batch_size}), own process  "
                  f"{fmt(rate(n, s)):>7} events/s ({fmt(n)} in {s:.1f}s; {wall:.1f}s from launch)")
        if res.consumer:
            n, s = res.consumer
            print(f"  confluent-kafka Consumer, in process          {fmt(rate(n, s)):>7} events/s "
                  f"({fmt(n)} in {s:.1f}s)")

    def report_targets(self, naive: float | None) -> None:
        print()
        print("summary against the targets:")
        rows = self.target_rows(naive)
        print(f"  {'measure':<78} {'events/s':>9} {'target':>9} {'ratio':>6}")
        for label, value, target, note in rows:
            ratio = value / target if target else float("nan")
            print(f"  {label:<78} {fmt(value):>9} {fmt(target):>9} {ratio:6.2f}  {'met' if ratio >= 1 else 'MISSED'}"
                  + (f"  ({note})" if note else ""))
        print("  (sink ceilings are in documents or orders per second; the pipeline writes fewer documents than "
              "it reads events, since each batch writes each aggregate once)")

    def target_rows(self, naive: float | None) -> list[tuple[str, float, float, str]]:
        """(measure, events/s, target, note) for each target the run has the figures for."""
        res = self.results
        rows = []
        overall = rate(*res.overall) if res.overall else None
        sinks = self.sink_rates()
        faust = rate(res.faust[0], res.faust[1]) if res.faust else None
        if overall is not None and faust is not None and sinks:
            slowest = min(sinks, key=sinks.get)
            bound = min(faust, sinks[slowest])
            which = "bare Faust" if faust <= sinks[slowest] else slowest
            rows.append((f"pipeline vs {TARGET_FRACTION_OF_CEILING} x min(bare Faust {fmt(faust)}, slowest sink "
                         f"{fmt(sinks[slowest])})", overall, TARGET_FRACTION_OF_CEILING * bound,
                         f"bound: {which}; sinks " + ", ".join(f"{k} {fmt(v)}/s" for k, v in sinks.items())))
        if overall is not None and naive:
            rows.append((f"pipeline vs {TARGET_TIMES_NAIVE} x naive ({fmt(naive)})", overall,
                         TARGET_TIMES_NAIVE * naive, ""))
        for name, run in res.projections.items():
            rows.append((f"worker {name} vs {fmt(TARGET_PER_WORKER)} events/s per process", run.events_per_s,
                         TARGET_PER_WORKER, ""))
        return rows

    def sink_rates(self) -> dict[str, float]:
        """Each sink's ceiling over the passes that write as the pipeline does (the reference inserts and
        the HINCRBY comparison left out)."""
        sinks = {}
        for sink, starts in (("MongoDB ReplaceOne", "MongoDB ReplaceOne"), ("Elasticsearch _bulk", "Elasticsearch"),
                             ("Redis Lua", "Redis sales Lua")):
            parts = [(n, s) for label, (n, s, _) in self.results.ceilings.items() if label.startswith(starts)]
            if parts:
                sinks[sink] = rate(sum(n for n, _ in parts), sum(s for _, s in parts))
        return sinks
