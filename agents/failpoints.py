"""Named crash points for fault-injection runs: the process kills itself (SIGKILL) at a chosen instruction.

`CQRS_FAILPOINTS="after-sink-write:0.05,order-views.between-writes:1"` arms two points, each firing
with its probability every time it is reached. Unset (production), `reach` is one dict lookup that
finds nothing. The chaos suite and the crash tests use it to kill a worker exactly where a real crash
would hurt most: between two writes of one batch, or after the writes but before progress is recorded.
"""
from __future__ import annotations

import logging
import os
import random
import signal

ENV = "CQRS_FAILPOINTS"
log = logging.getLogger("cqrs.failpoints")


def parse(spec: str) -> dict[str, float]:
    """`name:probability,...` -> {name: probability}; a bare name fires always. Raises ValueError on bad input."""
    armed: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, chance = part.partition(":")
        probability = float(chance) if chance else 1.0
        if not name or not 0.0 <= probability <= 1.0:
            raise ValueError(f"{ENV}: {part!r} is not name[:probability between 0 and 1]")
        armed[name] = probability
    return armed


ARMED: dict[str, float] = parse(os.environ.get(ENV, ""))


def reach(name: str) -> None:
    """Kill this process here if the point `name` is armed and its dice say so."""
    probability = ARMED.get(name)
    if probability is not None and random.random() < probability:
        log.critical("failpoint %s fired: killing the process", name)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)
