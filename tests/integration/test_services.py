"""Each external system answers its real protocol: the operations the pipeline relies on."""
from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import psycopg
import pytest
from pymongo import ReplaceOne

from agents.product_search import SERVING_REFRESH, drop_stock_levels, ensure_products_index
from connectors import elasticsearch, mongo, postgres, redis
from domain.read_models import PRODUCTS_MAPPING


def test_postgres_rolled_back_transaction_leaves_nothing(stack):
    table = f"rollback_probe_{uuid.uuid4().hex[:8]}"
    with postgres.connect(stack) as conn:
        conn.execute(f"create table {table} (id text primary key, amount numeric not null)")
        conn.commit()
        try:
            with pytest.raises(psycopg.errors.UniqueViolation):
                with conn.transaction():
                    conn.execute(f"insert into {table} values ('a', 1.10)")
                    conn.execute(f"insert into {table} values ('b', 2.20)")
                    conn.execute(f"insert into {table} values ('a', 3.30)")
            assert conn.execute(f"select count(*) from {table}").fetchone()[0] == 0
            with conn.transaction():
                conn.execute(f"insert into {table} values ('c', 79.99)")
            assert conn.execute(f"select amount from {table}").fetchall() == [(Decimal("79.99"),)]
        finally:
            conn.execute(f"drop table {table}")
            conn.commit()


def test_redis_pipeline_applies_all_commands_in_order(stack):
    client = redis.redis_client(stack)
    key = f"probe:{uuid.uuid4().hex}"
    with client.pipeline(transaction=True) as pipe:
        for i in range(1, 101):
            pipe.incrby(key, i)
        pipe.expire(key, 60)
        results = pipe.execute()
    assert results[99] == 5050
    assert client.get(key) == "5050"
    assert 0 < client.ttl(key) <= 60
    client.delete(key)


def test_mongo_upsert_read_back_and_unordered_bulk_upserts(stack):
    client = mongo.mongo_client(stack)
    coll = mongo.read_database(stack, client)[f"probe_{uuid.uuid4().hex[:8]}"]
    try:
        coll.replace_one({"_id": "O1"}, {"_id": "O1", "status": "pending", "total": 79.99}, upsert=True)
        coll.replace_one({"_id": "O1"}, {"_id": "O1", "status": "shipped", "total": 79.99}, upsert=True)
        assert coll.find_one({"_id": "O1"}) == {"_id": "O1", "status": "shipped", "total": 79.99}

        ops = [ReplaceOne({"_id": f"P{i}"}, {"_id": f"P{i}", "n": i}, upsert=True) for i in range(500)]
        first = coll.bulk_write(ops, ordered=False)
        assert first.upserted_count == 500
        again = coll.bulk_write([ReplaceOne({"_id": f"P{i}"}, {"_id": f"P{i}", "n": i * 2}, upsert=True)
                                 for i in range(500)], ordered=False)
        assert again.upserted_count == 0 and again.matched_count == 500
        assert coll.count_documents({}) == 501
        assert coll.find_one({"_id": "P250"})["n"] == 500
    finally:
        coll.drop()
        client.close()


def test_elasticsearch_match_with_range_filter(stack):
    client = elasticsearch.es_client(stack)
    index = f"probe-{uuid.uuid4().hex[:8]}"
    client.indices.create(index=index, mappings={"properties": {
        "name": {"type": "text"}, "category": {"type": "keyword"}, "price": {"type": "double"}}})
    try:
        docs = {"P200": ("Wireless Headphones", 79.99), "P150": ("Bluetooth Wireless Earbuds", 59.99),
                "P300": ("Wireless Studio Headphones", 349.00), "P400": ("Wired Desk Lamp", 19.99)}
        for pid, (name, price) in docs.items():
            client.index(index=index, id=pid, document={"name": name, "category": "Electronics", "price": price})
        client.indices.refresh(index=index)
        resp = client.search(index=index, query={"bool": {
            "must": [{"match": {"name": "wireless headphones"}}],
            "filter": [{"term": {"category": "Electronics"}}, {"range": {"price": {"lte": 100}}}]}})
        ids = [h["_id"] for h in resp["hits"]["hits"]]
        assert ids[0] == "P200"
        assert set(ids) == {"P200", "P150"}
    finally:
        client.indices.delete(index=index)


def test_the_serving_products_index_refreshes_at_this_releases_interval(stack):
    """A new serving index, and one an earlier release created with another interval, both make writes
    searchable every SERVING_REFRESH once a worker has ensured the index."""
    fresh, older = f"products-refresh-{uuid.uuid4().hex[:8]}", f"products-refresh-{uuid.uuid4().hex[:8]}"

    async def ensure_both() -> list[str]:
        es = elasticsearch.async_es_client(stack)
        try:
            await es.indices.create(index=f"{older}-v1", settings={"refresh_interval": "30s"}, aliases={older: {}})
            intervals = []
            for alias in (fresh, older):
                assert await ensure_products_index(es, alias) == alias
                found = (await es.indices.get_settings(index=alias, name="index.refresh_interval")).body
                intervals += [s["settings"]["index"]["refresh_interval"] for s in found.values()]
            return intervals
        finally:
            await es.indices.delete(index=f"{fresh}-v1,{older}-v1", ignore_unavailable=True)
            await es.close()

    assert asyncio.run(ensure_both()) == [SERVING_REFRESH, SERVING_REFRESH]


def test_an_index_from_an_earlier_release_loses_its_stale_stock_levels(stack):
    """Search documents no longer carry the stock level (only `in_stock`); an index built before keeps a
    `stock` field nobody updates, so ensuring the index removes it and leaves everything else as it was."""
    alias = f"products-stock-{uuid.uuid4().hex[:8]}"
    index = f"{alias}-v1"

    async def ensure_twice() -> tuple[dict, dict, int]:
        es = elasticsearch.async_es_client(stack)
        try:
            earlier = {**PRODUCTS_MAPPING, "properties": {**PRODUCTS_MAPPING["properties"], "stock": {"type": "integer"}}}
            await es.indices.create(index=index, mappings=earlier, aliases={alias: {}})
            await es.index(index=index, id="old", document={"product_id": "old", "stock": 3, "in_stock": True})
            await es.index(index=index, id="new", document={"product_id": "new", "in_stock": False}, refresh=True)
            assert await ensure_products_index(es, alias) == alias
            old, new = [(await es.get(index=alias, id=i))["_source"] for i in ("old", "new")]
            return old, new, await drop_stock_levels(es, alias)
        finally:
            await es.indices.delete(index=index, ignore_unavailable=True)
            await es.close()

    old, new, again = asyncio.run(ensure_twice())
    assert old == {"product_id": "old", "in_stock": True} and new == {"product_id": "new", "in_stock": False}
    assert again == 0
