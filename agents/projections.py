"""The projections and the topics each consumes (names before TOPIC_PREFIX), importable without Faust."""
from __future__ import annotations

PROJECTIONS = ("order-views", "product-search", "sales-stats")
TOPICS: dict[str, tuple[str, ...]] = {"order-views": ("order-events",), "product-search": ("product-events",),
                                      "sales-stats": ("order-events",)}


def source_topics(projection: str, prefix: str = "") -> tuple[str, ...]:
    """The topics a projection consumes, under TOPIC_PREFIX `prefix`."""
    return tuple(prefix + t for t in TOPICS[projection])


def consumer_group(projection: str, suffix: str = "") -> str:
    """The consumer group (and Faust app id) of a projection's workers."""
    return f"cqrs-{projection}{suffix}"
