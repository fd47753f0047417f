"""A round trip through every service of the stack, printing what it did: the quick proof that it works."""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from decimal import Decimal

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from app.settings import Settings
from connectors import elasticsearch, kafka, mongo, postgres, redis, registry

SMOKE_SCHEMA = """
{"type": "record", "name": "SmokeEvent", "namespace": "cqrs.smoke",
 "fields": [{"name": "event_id", "type": "string"},
            {"name": "aggregate_id", "type": "string"},
            {"name": "sequence_number", "type": "long"}]}
"""


def postgres_round_trip(settings: Settings, run_id: str) -> str:
    with postgres.connect(settings) as conn:
        with conn.transaction():
            conn.execute("create temporary table smoke (id text primary key, amount numeric) on commit drop")
            conn.execute("insert into smoke values (%s, %s)", (run_id, Decimal("79.99")))
            amount = conn.execute("select amount from smoke where id = %s", (run_id,)).fetchone()[0]
    assert amount == Decimal("79.99")
    return f"transaction wrote and read {amount} (server {postgres.check(settings).version})"


def redis_round_trip(settings: Settings, run_id: str) -> str:
    client = redis.redis_client(settings)
    key = f"smoke:{run_id}"
    with client.pipeline() as pipe:
        pipe.incrby(key, 2).incrby(key, 3).expire(key, 60).get(key)
        value = pipe.execute()[-1]
    assert value == "5", value
    return f"pipeline INCRBY 2+3 -> {value}"


def mongo_round_trip(settings: Settings, run_id: str) -> str:
    client = mongo.mongo_client(settings)
    try:
        coll = mongo.read_database(settings, client)["smoke"]
        coll.replace_one({"_id": run_id}, {"_id": run_id, "total": 79.99}, upsert=True)
        doc = coll.find_one({"_id": run_id})
        coll.delete_one({"_id": run_id})
    finally:
        client.close()
    assert doc and doc["total"] == 79.99
    return f"upserted and read back {{_id: {run_id}}}"


def es_round_trip(settings: Settings, run_id: str) -> str:
    client = elasticsearch.es_client(settings)
    index = f"smoke-{run_id}"
    try:
        client.index(index=index, id=run_id, document={"name": "Wireless Headphones", "price": 79.99},
                     refresh="wait_for")
        hits = client.search(index=index, query={"bool": {
            "must": [{"match": {"name": "wireless headphones"}}],
            "filter": [{"range": {"price": {"lte": 100}}}]}})["hits"]["hits"]
    finally:
        client.indices.delete(index=index, ignore_unavailable=True)
    assert [h["_id"] for h in hits] == [run_id]
    return "indexed a product and found it with match + range"


def kafka_round_trip(settings: Settings, run_id: str) -> str:
    topic = "smoke-events"
    kafka.ensure_topics(settings, [kafka.TopicSpec(topic, partitions=4,
                                                   replication_factor=settings.topic_replication_factor)])
    reg = registry.registry_client(settings)
    serializer = AvroSerializer(reg, SMOKE_SCHEMA)
    deserializer = AvroDeserializer(reg, SMOKE_SCHEMA)
    ctx = SerializationContext(topic, MessageField.VALUE)
    value = serializer({"event_id": run_id, "aggregate_id": run_id, "sequence_number": 1}, ctx)
    producer = Producer({**kafka.base_config(settings), "enable.idempotence": True})
    delivered = []
    producer.produce(topic, key=run_id, value=value, on_delivery=lambda err, msg: delivered.append((err, msg)))
    producer.flush(10)
    err, msg = delivered[0]
    if err:
        raise RuntimeError(f"produce failed: {err}")
    consumer = Consumer({**kafka.base_config(settings), "group.id": f"smoke-{run_id}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, msg.partition(), msg.offset())])
    try:
        got = consumer.poll(10)
    finally:
        consumer.close()
    if got is None or got.error():
        raise RuntimeError(f"consume failed: {got.error() if got else 'nothing within 10 s'}")
    record = deserializer(got.value(), ctx)
    assert record["event_id"] == run_id
    schema_id = int.from_bytes(got.value()[1:5], "big")
    return (f"Avro record (schema id {schema_id}) produced to {topic}[{msg.partition()}]@{msg.offset()} "
            f"and consumed back")


ROUND_TRIPS: tuple[tuple[str, Callable[[Settings, str], str]], ...] = (
    ("postgresql", postgres_round_trip),
    ("redis", redis_round_trip),
    ("mongodb", mongo_round_trip),
    ("elasticsearch", es_round_trip),
    ("kafka+registry", kafka_round_trip),
)


def run_smoke(settings: Settings, report: Callable[[str], None] = print) -> None:
    """Write and read back one thing in each service; raises on the first failure."""
    run_id = uuid.uuid4().hex[:12]
    report(f"smoke round trip {run_id}")
    for name, round_trip in ROUND_TRIPS:
        t0 = time.perf_counter()
        detail = round_trip(settings, run_id)
        report(f"  ok  {name:<14} {detail}  ({(time.perf_counter() - t0) * 1000:.0f} ms)")
    report("smoke round trip passed")
