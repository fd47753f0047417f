"""The guarded transport: Faust's commit path takes a governed partition's offset from its source.

These run Faust's own commit code on acknowledged messages (only the final request to Kafka is
recorded instead of sent), so a Faust release that computes committed offsets elsewhere fails here.
"""
from __future__ import annotations

import asyncio
import time

import faust
import pytest
from faust.exceptions import ConsumerNotStarted
from faust.transport.consumer import ConsumerMessage
from faust.types import TP

from faust.transport.drivers import aiokafka as faust_aiokafka

from agents.transport import BatchedFetchThread, GuardedConsumer, Transport, broker_urls


class FixedSource:
    def __init__(self, offset: int | None) -> None:
        self.offset = offset

    def governs(self, tp: TP) -> bool:
        return tp.topic == "orders"

    def committable(self, tp: TP) -> int | None:
        return self.offset


async def commit_after_acks(offset_source: FixedSource | None, acked: range) -> dict[TP, int]:
    """Acknowledge `acked` on both topics the way Faust's streams do, commit, and return what would
    have been sent to Kafka."""
    app = faust.App("transport-test", broker=broker_urls("localhost:1"), web_enabled=False)
    sent: dict[TP, int] = {}

    class RecordingConsumer(type(app.consumer)):  # type: ignore[misc]
        async def _commit_offsets(self, offsets, start_new_transaction: bool = True) -> bool:
            sent.update(offsets)
            return True

    consumer = RecordingConsumer(app.transport, callback=lambda message: None,
                                 on_partitions_revoked=lambda revoked: None,
                                 on_partitions_assigned=lambda assigned: None,
                                 loop=asyncio.get_running_loop())
    consumer.offset_source = offset_source
    app.topics.acking_topics.update({"orders", "orders-changelog"})
    for topic in ("orders", "orders-changelog"):
        for offset in acked:
            message = ConsumerMessage(topic, 0, offset, 0.0, None, None, b"key", b"value", 3, 5)
            consumer.track_message(message)
            assert consumer.ack(message)
    await consumer.commit()
    return sent


def test_broker_urls_select_the_guarded_transport() -> None:
    app = faust.App("transport-test", broker=broker_urls("localhost:9092, other:9093"), web_enabled=False)
    assert isinstance(app.transport, Transport)
    assert isinstance(app.consumer, GuardedConsumer)
    assert [str(url) for url in app.conf.broker] == ["guarded://localhost:9092", "guarded://other:9093"]


def test_governed_partition_commits_the_source_offset_not_faust_acknowledgements() -> None:
    sent = asyncio.run(commit_after_acks(FixedSource(3), range(10)))
    assert sent == {TP("orders", 0): 3, TP("orders-changelog", 0): 10}


def test_governed_partition_with_nothing_processed_is_not_committed() -> None:
    sent = asyncio.run(commit_after_acks(FixedSource(None), range(10)))
    assert sent == {TP("orders-changelog", 0): 10}


def test_without_a_source_faust_commits_what_was_acknowledged() -> None:
    sent = asyncio.run(commit_after_acks(None, range(10)))
    assert sent == {TP("orders", 0): 10, TP("orders-changelog", 0): 10}


def test_commit_guard_refuses_an_app_on_another_transport() -> None:
    from agents.commit_guard import CommitGuard

    class Settings:
        kafka_bootstrap_servers = "localhost:1"
        kafka_security_protocol = "PLAINTEXT"
        connect_timeout_s = 1.0
        projection_start = "earliest"
        worker_stall_s = 10.0

    app = faust.App("transport-test", broker="kafka://localhost:1", web_enabled=False)
    guard = CommitGuard(app, Settings(), "order-views", ["orders"])
    with pytest.raises(RuntimeError, match="guarded://"):
        guard.attach()


def simple_config(consumer) -> dict:
    """The plain settings an aiokafka consumer and its client were built with (their scalar attributes)."""
    def scalars(obj, prefix: str) -> dict:
        return {prefix + k: v for k, v in vars(obj).items() if isinstance(v, (int, str, float, bool, type(None), tuple))}
    return {**scalars(consumer, ""), **scalars(consumer._client, "client.")}


async def built_consumers() -> tuple[dict, dict]:
    app = faust.App("transport-test", broker=broker_urls("localhost:1"), web_enabled=False,
                    consumer_auto_offset_reset="earliest", broker_session_timeout=12)
    consumer = app.consumer
    consumer.fetch_wait_ms, consumer.fetch_min_bytes = 100, 1 << 20
    loop = asyncio.get_running_loop()
    ours = BatchedFetchThread(consumer, loop=loop, beacon=consumer.beacon)._create_worker_consumer(app.transport)
    faust_own = faust_aiokafka.AIOKafkaConsumerThread(consumer, loop=loop, beacon=consumer.beacon
                                                      )._create_worker_consumer(app.transport)
    try:
        return simple_config(ours), simple_config(faust_own)
    finally:
        await ours.stop()
        await faust_own.stop()


def test_the_workers_consumer_is_fausts_own_but_for_the_fetch_wait() -> None:
    ours, faust_own = asyncio.run(built_consumers())
    differ = {k: (ours.get(k), faust_own.get(k)) for k in ours.keys() | faust_own.keys() if ours.get(k) != faust_own.get(k)}
    assert differ == {"_fetch_min_bytes": (1 << 20, 1), "_fetch_max_wait_ms": (100, 1500)}
    assert len(ours) > 30 and ours["_group_id"] == "transport-test"


def test_a_guarded_app_uses_the_batched_fetch_thread() -> None:
    app = faust.App("transport-test", broker=broker_urls("localhost:1"), web_enabled=False)
    assert isinstance(app.consumer._thread, BatchedFetchThread)


async def taken_after(gather_ms: int) -> float:
    """Seconds until a take from a consumer thread that has no consumer yet fails (at once, in Faust)."""
    app = faust.App("transport-test", broker=broker_urls("localhost:1"), web_enabled=False)
    app.consumer.fetch_gather_ms = gather_ms
    thread = BatchedFetchThread(app.consumer, loop=asyncio.get_running_loop(), beacon=app.consumer.beacon)
    started = time.monotonic()
    with pytest.raises(ConsumerNotStarted):
        await thread.getmany(None, 1.0)
    return time.monotonic() - started


def test_records_gather_for_the_pause_before_faust_takes_them() -> None:
    """The pause comes before the take, so what the relay publishes meanwhile is fetched with it."""
    assert asyncio.run(taken_after(300)) >= 0.3
    assert asyncio.run(taken_after(0)) < 0.3


def test_a_worker_sets_its_consumers_pause_from_the_settings() -> None:
    from agents.worker import create_worker_app
    from app.settings import Settings

    app = create_worker_app("order-views", Settings(worker_fetch_gather_ms=40), prepare_codecs=lambda: {})
    assert app.consumer.fetch_gather_ms == 40
