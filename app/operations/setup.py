"""Everything the pipeline needs before it runs: write-model schema, topics, registered event schemas.
Each step is idempotent, so every process may run it at start."""
from __future__ import annotations

from agents.dead_letters import dead_letter_topic
from app.settings import Settings
from connectors import kafka, registry
from schemas import TOPICS
from schemas.codec import EventCodec, register_codecs

# The event topics are the history every read model is rebuilt from: they keep every event (in production,
# with tiered storage moving old segments to object storage; see the README).
EVENT_TOPIC_CONFIG = (("cleanup.policy", "delete"), ("retention.ms", "-1"), ("retention.bytes", "-1"))


def event_topic_specs(settings: Settings) -> list[kafka.TopicSpec]:
    """The event topics, with explicit partition counts, keeping every event."""
    return [kafka.TopicSpec(settings.topic_prefix + t, settings.topic_partitions, settings.topic_replication_factor,
                            EVENT_TOPIC_CONFIG) for t in TOPICS]


def prepare_event_codecs(settings: Settings) -> dict[str, EventCodec]:
    kafka.ensure_topics(settings, event_topic_specs(settings))
    return register_codecs(registry.registry_client(settings), TOPICS, settings.topic_prefix)


def setup_all(settings: Settings) -> dict[str, str]:
    from app.commands.migrate import migrate

    revision = migrate(settings)
    codecs = prepare_event_codecs(settings)
    kafka.set_topic_config(settings, [spec.name for spec in event_topic_specs(settings)], dict(EVENT_TOPIC_CONFIG))
    kafka.ensure_topics(settings, [dead_letter_topic(settings)])
    return {"write model": f"migrated to revision {revision}",
            **{f"topic {t}": f"{settings.topic_partitions} partitions, schema id {c.schema_id}"
               for t, c in codecs.items()}}
