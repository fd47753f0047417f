"""The read store's batch reads and writes (agents/read_store.py) against the local FerretDB, and the
patches that make FerretDB serve them from its `_id` index (deploy/local/services/ferretdb_patches/)."""
from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from pymongo import InsertOne, ReplaceOne
from pymongo.errors import BulkWriteError

from agents.read_store import IDS_PER_QUERY, bulk_write_unordered, find_by_ids
from connectors import mongo


def run_on_collection(stack, body):
    """Run `body(collection)` on a fresh collection of the read database, dropped afterwards."""
    async def main():
        client = mongo.async_mongo_client(stack, serverSelectionTimeoutMS=5000)
        coll = client[stack.mongo_database][f"probe_{uuid.uuid4().hex[:8]}"]
        try:
            return await body(coll)
        finally:
            await coll.drop()
            await client.close()
    return asyncio.run(main())


def test_find_by_ids_returns_the_documents_that_exist_across_query_chunks(stack):
    async def body(coll):
        await coll.insert_many([{"_id": f"O{i}", "n": i} for i in range(IDS_PER_QUERY + 300)])
        wanted = [f"O{i}" for i in range(0, IDS_PER_QUERY + 300, 2)] + ["missing-1", "O0", "missing-2"]
        return wanted, await find_by_ids(coll, wanted, {"n": 1})

    wanted, found = run_on_collection(stack, body)
    assert set(found) == {w for w in wanted if not w.startswith("missing")}
    assert found["O1000"] == {"_id": "O1000", "n": 1000}


def test_bulk_write_errors_point_into_the_operations(stack):
    async def body(coll):
        await coll.insert_one({"_id": "taken"})
        ops = [("a", InsertOne({"_id": "a"})), ("taken", InsertOne({"_id": "taken"})),
               ("b", ReplaceOne({"_id": "b"}, {"_id": "b", "v": 1}, upsert=True))]
        with pytest.raises(BulkWriteError) as failed:
            await bulk_write_unordered(coll, ops)
        return failed.value.details["writeErrors"], await coll.count_documents({})

    errors, count = run_on_collection(stack, body)
    assert [e["index"] for e in errors] == [1]
    assert count == 3   # unordered: the other two were written


@pytest.mark.parametrize("query", [{"_id": "O7"}, {"_id": {"$in": ["O7", "O8", "O9"]}}],
                         ids=["equality", "in"])
def test_id_lookups_are_served_by_the_id_index(stack, query):
    """Patches 0002 (equality) and 0003 ($in): unpatched, FerretDB turns these into a scan of the whole
    table (`@>` containment for equality, no pushdown at all for $in)."""
    client = mongo.mongo_client(stack)
    db = mongo.read_database(stack, client)
    coll = db[f"probe_{uuid.uuid4().hex[:8]}"]
    try:
        coll.insert_many([{"_id": f"O{i}"} for i in range(2_000)])
        plan = db.command("explain", {"find": coll.name, "filter": query})
        assert plan.get("filterPushdown") is True, plan
        text = json.dumps(plan.get("queryPlanner"))
        assert "Index" in text and "_id" in text and "Seq Scan" not in text, text
        assert sorted(d["_id"] for d in coll.find(query)) == sorted(
            query["_id"]["$in"] if isinstance(query["_id"], dict) else [query["_id"]])
    finally:
        coll.drop()
        client.close()


def test_a_bulk_load_in_concurrent_parts_reports_errors_as_one_bulk_would(stack):
    """A rebuild's flush runs as a few concurrent bulks; its errors still index into the whole list."""
    async def body(coll):
        await coll.insert_many([{"_id": "O10"}, {"_id": "O250"}])
        ops = [(f"O{i}", InsertOne({"_id": f"O{i}", "n": i})) for i in range(400)]
        with pytest.raises(BulkWriteError) as failed:
            await bulk_write_unordered(coll, ops, parts=4)
        return failed.value.details["writeErrors"], await coll.count_documents({})

    errors, count = run_on_collection(stack, body)
    assert [e["index"] for e in errors] == [10, 250]
    assert count == 400
