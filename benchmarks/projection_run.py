"""The data of one `make bench-projections` run: its isolation (topics, groups, databases), what it
loaded, and the figures it gathers for the report."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


from benchmarks.measures import rate

ROOT = Path(__file__).resolve().parents[1]


class BenchError(RuntimeError):
    """A step failed or ran out of time; the message is one line."""


@dataclass
class Isolation:
    run: str

    @property
    def prefix(self) -> str:
        return f"bench-{self.run}-"

    @property
    def marker(self) -> str:
        """Every Kafka topic and consumer group of the run contains this."""
        return f"bench-{self.run}"

    @property
    def group_suffix(self) -> str:
        return f"-bench-{self.run}"

    @property
    def env(self) -> dict[str, str]:
        return {"TOPIC_PREFIX": self.prefix, "MONGO_DATABASE": f"cqrs_bench_{self.run}",
                "REDIS_URL": "redis://127.0.0.1:6379/1", "ES_PRODUCTS_ALIAS": f"bench-products-{self.run}"}


@dataclass
class Loaded:
    per_topic: Counter
    aggregates: Counter
    counts: Counter
    orders_not_cancelled: int
    products_in_orders: int
    seconds: float
    searched: dict[str, dict]  # the search documents the product events imply, each at its last change


@dataclass
class ProjectionRun:
    name: str
    events: int
    launched_at: float
    assigned_at: float | None = None
    done_at: float | None = None
    committed: int = 0
    cpu_s: float = 0.0
    batches: tuple[int, float] = (0, float("nan"))   # (batches, mean events per batch)

    @property
    def seconds(self) -> float:
        start = self.assigned_at or self.launched_at
        return ((self.done_at or time.monotonic()) - start)

    @property
    def events_per_s(self) -> float:
        return rate(self.committed if self.done_at is None else self.events, self.seconds)


@dataclass
class Results:
    projections: dict[str, ProjectionRun] = field(default_factory=dict)
    overall: tuple[int, float] | None = None          # (events, seconds)
    pipeline_wall_s: float = 0.0
    pipeline_busy_pct: float = 0.0
    pipeline_cpu: dict[str, float] = field(default_factory=dict)   # role -> CPU seconds during the pipeline
    faust: tuple[int, float, float] | None = None      # (events, seconds consuming, wall seconds)
    consumer: tuple[int, float] | None = None
    naive: dict[str, tuple[int, float]] = field(default_factory=dict)
    ceilings: dict[str, tuple[int, float, str]] = field(default_factory=dict)  # label -> (docs, s, unit)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
