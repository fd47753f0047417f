"""Has every projection caught up? Compares each consumer group's committed offsets with the end offsets
its source partitions had at a chosen moment — the definition of "recovered" the chaos report uses.

Never asserts and never raises for an unreachable Kafka: a probe that fails counts as "not yet". Every
request goes through a child process (kafka_probe) that makes one client per request; it is started before
the first wait, so its start-up never counts as recovery time.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agents.projections import PROJECTIONS, consumer_group, source_topics
from app.settings import Settings
from tests.chaos.kafka_probe import KafkaProbe
from tests.conftest import ROOT

PROBE_TIMEOUT_S = 5.0
POLL_S = 0.5

Offsets = dict[tuple[str, int], int]


@dataclass
class GroupProgress:
    """The consumer groups of one isolated pipeline (topic prefix + group suffix) and their source partitions."""

    settings: Settings
    group_suffix: str
    say: Callable[[str], None] = lambda _: None
    last_lagging: dict[str, int] | None = None   # after a wait that timed out: partitions behind, per projection
    probe: KafkaProbe = field(init=False)

    def __post_init__(self) -> None:
        self.probe = KafkaProbe({}, ROOT, self.say)
        self.probe.start()

    def close(self) -> None:
        self.probe.close()

    def describe_lag(self) -> str:
        """Which groups the last wait that timed out left behind, e.g. "product-search 3/6 behind"."""
        if self.last_lagging is None:
            return "lag unknown (Kafka did not answer)"
        return ", ".join(f"{p} {n}/{len(self.partitions(p))} behind" for p, n in self.last_lagging.items() if n)

    def partitions(self, projection: str) -> list[tuple[str, int]]:
        return [(t, p) for t in source_topics(projection, self.settings.topic_prefix)
                for p in range(self.settings.topic_partitions)]

    def end_offsets(self, probe: KafkaProbe) -> Offsets | None:
        """The end offset of every source partition now, or None if Kafka did not answer."""
        wanted = sorted({tp for projection in PROJECTIONS for tp in self.partitions(projection)})
        return probe.end_offsets(wanted, PROBE_TIMEOUT_S)

    def lagging(self, probe: KafkaProbe, ends: Offsets) -> dict[str, int] | None:
        """Per projection, how many partitions its group has not committed up to `ends`; None if unknown."""
        behind: dict[str, int] = {}
        for projection in PROJECTIONS:
            tps = self.partitions(projection)
            committed = probe.committed(consumer_group(projection, self.group_suffix), tps, PROBE_TIMEOUT_S)
            if committed is None:
                return None
            behind[projection] = sum(1 for tp in tps if ends.get(tp, 0) > 0 and (committed.get(tp) or 0) < ends[tp])
        return behind

    def wait_caught_up(self, timeout: float) -> float | None:
        """Take the end offsets now (retrying while Kafka does not answer), then wait until every group has
        committed at least them. Returns the seconds that took from the call, or None after `timeout`."""
        started = time.monotonic()
        deadline = started + timeout
        self.last_lagging = ends = None
        while ends is None and time.monotonic() < deadline:
            ends = self.end_offsets(self.probe)
            if ends is None:
                time.sleep(POLL_S)
        while ends is not None and time.monotonic() < deadline:
            behind = self.lagging(self.probe, ends)
            if behind is not None and not any(behind.values()):
                return time.monotonic() - started
            self.last_lagging = behind
            time.sleep(POLL_S)
        return None
