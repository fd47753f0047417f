"""Avro schemas of the event topics (one envelope record per topic, payload a union of event records)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent
TOPICS = ("order-events", "product-events", "customer-events")


@lru_cache(maxsize=None)
def load_schema(topic: str) -> dict:
    """The .avsc document for a topic, as JSON."""
    path = SCHEMA_DIR / f"{topic}.avsc"
    if not path.exists():
        raise KeyError(f"no schema for topic {topic!r} in {SCHEMA_DIR}")
    return json.loads(path.read_text())


def subject_for(topic: str) -> str:
    """Confluent TopicNameStrategy: the value schema of `topic` lives under `<topic>-value`."""
    return f"{topic}-value"
