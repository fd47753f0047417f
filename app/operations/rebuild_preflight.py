"""What a rebuild checks before it creates anything: the services it needs answer, and the topics still
hold the read model's whole history — a rebuild from a log that retention has trimmed would build a
version missing the oldest aggregates, and switch reads to it.

The event topics keep every event by default (`retention.ms=-1`, app/operations/setup.py), so this only
refuses where an operator shortened retention or deleted records. A partition that no longer starts at
offset 0 has lost events; `cqrs rebuild` then refuses (exit 2) unless `--allow-partial`.
"""
from __future__ import annotations

from app.settings import Settings
from connectors import elasticsearch, kafka, mongo, postgres, redis

EXIT_INCOMPLETE = 2


def check_services(projection: str, settings: Settings) -> None:
    """Fail fast, with the service's one-line reason, before anything is created."""
    needed = [postgres, redis, mongo, kafka] + ([elasticsearch] if projection == "product-search" else [])
    for module in needed:
        module.check(settings)


class IncompleteHistory(RuntimeError):
    """The topics no longer hold the first events of the read model's history."""


def lost_events(settings: Settings, topics: tuple[str, ...]) -> dict[tuple[str, int], int]:
    """Per partition that no longer starts at offset 0, how many of its first events are gone."""
    partitions = [(topic, p) for topic in topics for p in range(settings.topic_partitions)]
    return {tp: first for tp, first in kafka.earliest_offsets(settings, partitions).items() if first > 0}


def require_whole_history(settings: Settings, projection: str, topics: tuple[str, ...], allow_partial: bool) -> str:
    """Raise IncompleteHistory when events are gone and a partial rebuild was not asked for; else a note."""
    lost = lost_events(settings, topics)
    if not lost:
        return ""
    where = ", ".join(f"{t}[{p}] offsets 0..{first - 1}" for (t, p), first in sorted(lost.items())[:4])
    more = f" and {len(lost) - 4} more partitions" if len(lost) > 4 else ""
    summary = f"{sum(lost.values()):,} events no longer in the topics ({where}{more})"
    if not allow_partial:
        raise IncompleteHistory(f"{projection}: {summary}; a rebuild would miss them. "
                                "Pass --allow-partial to build and switch to it anyway")
    return f"building a partial version on purpose (--allow-partial): {summary}"
