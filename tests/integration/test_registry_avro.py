"""Avro records round-trip in Confluent wire format through the real schema registry."""
from __future__ import annotations

import io
import json
import struct
import uuid

import fastavro
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from connectors import registry


def _schema(name: str) -> dict:
    return {"type": "record", "name": name, "namespace": "cqrs.probe", "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "aggregate_id", "type": "string"},
        {"name": "sequence_number", "type": "long"},
        {"name": "total", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}},
    ]}


def test_avro_round_trip_in_confluent_wire_format(stack):
    from decimal import Decimal

    client = registry.registry_client(stack)
    topic = f"probe-{uuid.uuid4().hex[:8]}"
    subject = f"{topic}-value"
    schema = _schema("OrderProbe")
    schema_id = client.register_schema(subject, Schema(json.dumps(schema), "AVRO"))
    assert client.get_latest_version(subject).schema_id == schema_id

    record = {"event_id": str(uuid.uuid4()), "aggregate_id": "O789", "sequence_number": 3,
              "total": Decimal("99.99")}
    ctx = SerializationContext(topic, MessageField.VALUE)
    serializer = AvroSerializer(client, json.dumps(schema), conf={"auto.register.schemas": False,
                                                                 "use.latest.version": True})
    payload = serializer(record, ctx)

    magic, wire_id = struct.unpack(">bI", payload[:5])
    assert magic == 0
    assert wire_id == schema_id

    decoded = fastavro.schemaless_reader(io.BytesIO(payload[5:]), fastavro.parse_schema(schema))
    assert decoded == record
    assert AvroDeserializer(client)(payload, ctx) == record

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    assert payload[5:] == buf.getvalue(), "confluent-kafka and fastavro disagree on the Avro body"
    client.delete_subject(subject)
