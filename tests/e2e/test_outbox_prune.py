"""The relay prunes published outbox rows once they are older than OUTBOX_KEEP_HOURS, and only those:
unpublished rows, and published ones still inside the window, stay."""
from __future__ import annotations

import asyncio
import uuid

import psycopg

from app.commands.relay import PRUNE_BATCH, PRUNE_MAX_BATCHES, OutboxRelay
from app.settings import Settings
from connectors import postgres


def insert_rows(db, aggregate: str, published_ago_s: list[float | None]) -> None:
    for seq, ago in enumerate(published_ago_s, start=1):
        db.execute("insert into outbox (event_id, topic, aggregate_type, aggregate_id, sequence_number, event_type, "
                   "payload, published_at) values (%s, 'prune-test', 'order', %s, %s, 'OrderCreated', '\\x00', "
                   "case when %s::float is null then null else now() - make_interval(secs => %s::float) end)",
                   (uuid.uuid4(), aggregate, seq, ago, ago))


def test_relay_prunes_only_published_rows_older_than_the_window(setup_done, db, settings: Settings) -> None:
    aggregate = f"prune-{uuid.uuid4().hex[:8]}"
    day = 86_400.0  # a window of a week: only rows no run of the stack needs any more are old enough
    insert_rows(db, aggregate, [9 * day, 8 * day, 6 * day, None, 10 * day])

    async def prune() -> int:
        """As the relay's pruning task does: calls of bounded batches until nothing more is due."""
        relay = OutboxRelay(settings.model_copy(update={"outbox_keep_hours": 7 * 24.0}))
        async with await psycopg.AsyncConnection.connect(postgres.conninfo(settings), autocommit=True) as conn:
            total = 0
            for _ in range(100):
                pruned = await relay.prune(conn)
                assert pruned <= PRUNE_BATCH * PRUNE_MAX_BATCHES
                total += pruned
                if pruned < PRUNE_BATCH * PRUNE_MAX_BATCHES:
                    return total
            raise AssertionError("pruning did not finish")

    try:
        pruned = asyncio.run(prune())
        left = db.execute("select sequence_number, published_at is null from outbox where aggregate_id = %s "
                          "order by 1", (aggregate,)).fetchall()
        assert left == [(3, False), (4, True)]
        assert pruned >= 3  # ours, and any other published row of the stack older than a week
    finally:
        db.execute("delete from outbox where aggregate_id = %s", (aggregate,))
