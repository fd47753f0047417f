"""Outbox pruning benchmark: what the relay's publish-then-prune costs the write model.

Inserts `--rows` published outbox rows older than the keep window (generated in PostgreSQL, under the
topic `bench-prune-<run>`), then runs the relay's prune rounds until they are gone, timing each round
(at most 100,000 rows in batches of 5,000) and a publish-sized statement run meanwhile.

    make bench-outbox     # or: python -m benchmarks.outbox_prune --rows 300000
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import psycopg

from app.commands.relay import PRUNE_BATCH, PRUNE_MAX_BATCHES, OutboxRelay
from app.settings import get_settings
from connectors import postgres

FILL = """
insert into outbox (event_id, topic, aggregate_type, aggregate_id, sequence_number, event_type, payload, created_at,
                    published_at)
select gen_random_uuid(), %(topic)s, 'order', %(topic)s || '-' || (g / 4), g %% 4 + 1, 'OrderCreated',
       decode(repeat('ab', 200), 'hex'), now() - interval '3 days', now() - interval '3 days'
from generate_series(0, %(rows)s - 1) g
"""


async def run(rows: int) -> None:
    settings = get_settings().model_copy(update={"outbox_keep_hours": 24.0})
    topic = f"bench-prune-{uuid.uuid4().hex[:6]}"
    async with await psycopg.AsyncConnection.connect(postgres.conninfo(settings), autocommit=True) as conn:
        started = time.perf_counter()
        await conn.execute(FILL, {"topic": topic, "rows": rows})
        print(f"inserted {rows:,} published rows 3 days old in {time.perf_counter() - started:.1f}s")
        relay = OutboxRelay(settings)
        rounds, total, probes = [], 0, []
        while True:
            started = time.perf_counter()
            pruned = await relay.prune(conn)
            rounds.append(time.perf_counter() - started)
            total += pruned
            probe = time.perf_counter()
            await conn.execute("select count(*) from outbox where published_at is null")
            probes.append(time.perf_counter() - probe)
            if pruned < PRUNE_BATCH * PRUNE_MAX_BATCHES:
                break
        left = (await (await conn.execute("select count(*) from outbox where topic = %s", (topic,))).fetchone())[0]
    print(f"pruned {total:,} rows in {len(rounds)} rounds: {sum(rounds):.1f}s, {total / sum(rounds):,.0f} rows/s; "
          f"a full round ({PRUNE_BATCH * PRUNE_MAX_BATCHES:,} rows) took {max(rounds):.2f}s at most, "
          f"median {statistics.median(rounds):.2f}s; rows of the run left: {left}")
    print(f"the relay's backlog query between rounds: median {statistics.median(probes) * 1000:.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    args = parser.parse_args(argv)
    asyncio.run(run(args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
