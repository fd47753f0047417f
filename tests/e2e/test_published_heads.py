"""The relay's published heads, which the query API's freshness relies on: each order's events are in the
partition the query API computes for it (the producers' murmur2), and the head the relay records for
that partition covers them as soon as the rows are marked published."""
from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, TopicPartition

from app.settings import Settings
from connectors import kafka, postgres
from domain.partitioning import partition_for
from tests.e2e.conftest import create_customer, create_order, create_product, wait_until


def published(settings: Settings, order_ids: list[str]) -> bool:
    with postgres.connect(settings) as conn:
        return conn.execute("select count(*) = 0 from outbox where aggregate_id = any(%s) and published_at is null",
                            (order_ids,)).fetchone()[0]


def heads(settings: Settings, topic: str) -> dict[int, int]:
    with postgres.connect(settings) as conn:
        return dict(conn.execute("select partition, next_offset from stream_heads where topic = %s",
                                 (topic,)).fetchall())


def offsets_of(settings: Settings, topic: str, wanted: dict[str, int], heads: dict[int, int]) -> dict[str, tuple]:
    """(partition, offset) of the OrderCreated record of each order, read back from Kafka near each head."""
    consumer = Consumer({**kafka.base_config(settings), "group.id": f"heads-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    found: dict[str, tuple] = {}
    try:
        partitions = sorted(set(wanted.values()))
        consumer.assign([TopicPartition(topic, p, max(0, heads[p] - 200)) for p in partitions])
        end = time.monotonic() + 60
        while time.monotonic() < end:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            key = message.key().decode()
            if key in wanted and key not in found:
                found[key] = (message.partition(), message.offset())
            if len(found) == len(wanted):
                break
    finally:
        consumer.close()
    return found


def test_orders_land_in_the_computed_partition_below_its_published_head(client, settings: Settings) -> None:
    customer = create_customer(client, name="Head Counter")
    product = create_product(client, price="10.00", stock=1000)
    orders = [create_order(client, customer, [(product, 1)])["order_id"] for _ in range(12)]
    wait_until("the relay published the orders", lambda: published(settings, orders))
    topic = settings.topic_prefix + "order-events"
    recorded = heads(settings, topic)
    expected = {order: partition_for(order, settings.topic_partitions) for order in orders}
    assert len(set(expected.values())) > 1  # the orders spread over partitions
    found = offsets_of(settings, topic, expected, recorded)
    assert {order: partition for order, (partition, _) in found.items()} == expected
    for order, (partition, offset) in found.items():
        assert recorded[partition] > offset, f"head {recorded[partition]} of partition {partition} misses {order}"
