"""The one Avro codec: Confluent wire format (magic byte 0, 4-byte schema id, Avro body) via fastavro.

Schemas are parsed once per process. Decoding resolves the writer's schema by id (fetched from the
registry once, then cached) against our reader schema, so consumers keep working across compatible
schema evolution.
"""
from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from typing import Any

import fastavro
from fastavro.types import Schema

from schemas import load_schema, subject_for

MAGIC = 0
_HEADER = struct.Struct(">bI")


class DecodeError(ValueError):
    """The bytes are not a Confluent-framed Avro record this codec can read."""


class EventCodec:
    """Encode/decode the envelopes of one topic. Thread-safe after construction (caches only grow)."""

    def __init__(self, topic: str, schema_id: int, fetch_writer: Callable[[int], dict] | None = None,
                 schema_name: str | None = None) -> None:
        self.topic = topic
        self.schema_id = schema_id
        self.schema: Schema = fastavro.parse_schema(load_schema(schema_name or topic))
        self._header = _HEADER.pack(MAGIC, schema_id)
        self._fetch_writer = fetch_writer
        self._writers: dict[int, Schema] = {schema_id: self.schema}

    def encode(self, envelope: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self._header)
        fastavro.schemaless_writer(buf, self.schema, envelope)
        return buf.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        if len(data) < 5:
            raise DecodeError(f"{len(data)} bytes is too short for a Confluent-framed record")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise DecodeError(f"unknown magic byte {magic}")
        writer = self._writer(schema_id)
        try:
            if writer is self.schema:
                return fastavro.schemaless_reader(io.BytesIO(data[5:]), writer, None)
            return fastavro.schemaless_reader(io.BytesIO(data[5:]), writer, self.schema)
        except Exception as exc:  # fastavro raises assorted errors on corrupt bodies
            raise DecodeError(f"cannot decode {self.topic} record with schema id {schema_id}: {exc}") from exc

    def _writer(self, schema_id: int) -> Schema:
        writer = self._writers.get(schema_id)
        if writer is None:
            if self._fetch_writer is None:
                raise DecodeError(f"unknown schema id {schema_id} and no registry to ask")
            try:
                writer = fastavro.parse_schema(self._fetch_writer(schema_id))
            except Exception as exc:
                raise DecodeError(f"cannot resolve writer schema id {schema_id}: {exc}") from exc
            self._writers[schema_id] = writer
        return writer


def register_codecs(client, topics: tuple[str, ...], prefix: str = "") -> dict[str, EventCodec]:
    """Register each topic's schema (a no-op when already registered) and build its codec, keyed by the
    topic's full name `<prefix><topic>`; the subject follows the full name (TopicNameStrategy)."""
    from confluent_kafka.schema_registry import Schema as RegistrySchema

    def fetch(schema_id: int) -> dict:
        return json.loads(client.get_schema(schema_id).schema_str)

    codecs = {}
    for topic in topics:
        full = prefix + topic
        schema_id = client.register_schema(subject_for(full), RegistrySchema(json.dumps(load_schema(topic)), "AVRO"))
        codecs[full] = EventCodec(full, schema_id, fetch, schema_name=topic)
    return codecs
