"""A bare Faust agent for the projection benchmark: it only decodes (fastavro, through the project's codec)
and counts, consuming the way the projection workers do (take_events batches, same app settings), so
its rate is the ceiling Faust itself sets for a worker on this machine.

    DRAIN_APP_ID=... DRAIN_TOPIC=... DRAIN_EXPECTED=... DRAIN_OUT=... python -m benchmarks.faust_drain

Writes one JSON line to DRAIN_OUT when it has counted DRAIN_EXPECTED events:
{"count", "decode_errors", "first_at", "last_at"} (epoch seconds of the first and last batch).
"""
from __future__ import annotations

import json
import os
import time

import faust

from app.settings import Settings
from app.operations.setup import prepare_event_codecs
from agents.transport import broker_credentials
from schemas.codec import DecodeError

settings = Settings()
APP_ID = os.environ["DRAIN_APP_ID"]
TOPIC = os.environ["DRAIN_TOPIC"]
EXPECTED = int(os.environ["DRAIN_EXPECTED"])
OUT = os.environ["DRAIN_OUT"]

app = faust.App(
    APP_ID,
    broker=[f"kafka://{b}" for b in settings.kafka_bootstrap_servers.split(",")],
    broker_credentials=broker_credentials(settings),
    store="memory://",
    web_enabled=False,
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=settings.topic_replication_factor,
    consumer_auto_offset_reset="earliest",
    stream_buffer_maxsize=max(4096, settings.projection_batch_size * 2),
    broker_commit_interval=1.0,
    table_standby_replicas=0,
)
topic = app.topic(TOPIC, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


@app.agent(topic, concurrency=1)
async def drain(stream):
    codec = prepare_event_codecs(settings)[TOPIC]
    count = errors = 0
    first_at = None
    async for events in stream.take_events(settings.projection_batch_size, within=settings.projection_batch_wait_s):
        if first_at is None:
            first_at = time.time()
        for event in events:
            try:
                codec.decode(event.value)
            except DecodeError:
                errors += 1
            count += 1
        if count >= EXPECTED:
            with open(OUT, "a") as out:
                out.write(json.dumps({"count": count, "decode_errors": errors, "first_at": first_at,
                                      "last_at": time.time()}) + "\n")
            first_at, count, errors = None, 0, 0


if __name__ == "__main__":
    from faust import Worker

    worker = Worker(app, loglevel="WARNING", quiet=True)   # started as `cqrs worker` starts the projections
    worker.spinner = None
    worker.execute_from_commandline()
