"""A minimal Faust worker for the consumer-group ordering test: records what it consumed, one JSON line each."""
from __future__ import annotations

import json
import os

import faust

from agents.transport import broker_credentials
from app.settings import Settings

settings = Settings()
app = faust.App(
    os.environ["PROBE_APP_ID"],
    broker=f"kafka://{settings.kafka_bootstrap_servers}",
    broker_credentials=broker_credentials(settings),
    store="memory://",
    web_enabled=False,
    topic_partitions=4,
    topic_replication_factor=1,
    consumer_auto_offset_reset="earliest",
)
topic = app.topic(os.environ["PROBE_TOPIC"], key_type=bytes, value_type=bytes, key_serializer="raw",
                  value_serializer="raw", partitions=4)


@app.agent(topic)
async def record(stream):
    with open(os.environ["PROBE_OUT"], "a") as out:
        async for event in stream.events():
            out.write(json.dumps({"key": event.key.decode(), "value": event.value.decode(),
                                  "partition": event.message.partition, "offset": event.message.offset}) + "\n")
            out.flush()


if __name__ == "__main__":
    app.main()
