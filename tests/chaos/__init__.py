"""Fault-injection ("chaos") suite: the whole pipeline under open-loop command traffic while workers
are SIGKILLed, crash themselves at failpoints, Kafka restarts and each read store goes away for a
while — then every read model (and the query API's cached answers) is compared with the truth
derived from the write model.

Run it with `python -m tests.chaos [--short]` or `make chaos`; `tests/e2e/test_chaos.py` runs the
short variant. One run is bounded (every wait has a deadline) and always restores what it broke:
stopped services are brought back up, started processes stopped, the isolated read models, topics
and consumer groups dropped — and if the run process itself dies (SIGKILL, a crash in a native
library), its guard process does the same.

Modules, one job each: `config` (knobs and presets), `stack_control` (stopping and starting stack
services), `supervisor` (worker processes, restarts, exit bookkeeping), `workload` (the catalogue
and the command mix), `traffic` (the open-loop sender), `progress` (consumer-group catch-up),
`faults` (the fault plan and how each fault is injected and measured), `cached_reads` (answers of
the query API), `report` (the result and its table), `guard` (the watchdog), `timeline` (the run's
clock), `run` (one run, start to finish).
"""
