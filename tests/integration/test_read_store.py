"""The read store's batch reads and writes (agents/read_store.py) against the local FerretDB, and the
patches that make FerretDB serve them from its `_id` index and write a bulk of updates by `_id` in one
transaction (deploy/local/services/ferretdb_patches/)."""
from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from pymongo import InsertOne, ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError

from agents.read_store import IDS_PER_QUERY, bulk_write_unordered, find_by_ids
from connectors import mongo, postgres
from domain.read_models import customer_history_filter, history_entry_id


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


def _next_transaction_id(stack) -> int:
    """The cluster's next transaction id; reading it assigns none. FerretDB's database lives in the same
    PostgreSQL cluster as the write model, so every transaction it commits moves it on by one."""
    with postgres.connect(stack) as conn:
        return int(conn.execute("select pg_snapshot_xmax(pg_current_snapshot())::text").fetchone()[0])


def test_a_bulk_of_updates_by_id_commits_once_not_once_per_document(stack):
    """Patch 0004: one `update` command of replacements by `_id` (what each batch of the order views
    writes) ran one query and one transaction per document. Unpatched, this bulk commits 300 times."""
    async def body(coll):
        await coll.insert_many([{"_id": f"O{i}", "n": 0} for i in range(200)])
        before = _next_transaction_id(stack)
        result = await coll.bulk_write([ReplaceOne({"_id": f"O{i}"}, {"n": i + 1}, upsert=True)
                                        for i in range(300)], ordered=False)
        after = _next_transaction_id(stack)
        return result, after - before, {d["_id"]: d["n"] async for d in coll.find({})}

    result, transactions, stored = run_on_collection(stack, body)
    assert (result.matched_count, result.modified_count, len(result.upserted_ids)) == (200, 200, 100)
    assert stored == {f"O{i}": i + 1 for i in range(300)}
    assert transactions < 30, f"{transactions} transactions for one bulk of 300 updates by _id"


def test_updates_by_id_in_bulk_keep_each_statements_filter_and_upsert(stack):
    """The bulk path applies every statement's whole filter and update, reports counts and upserted
    indexes as MongoDB does, and leaves documents whose guard does not hold untouched."""
    async def body(coll):
        await coll.insert_many([{"_id": "same", "v": 1}, {"_id": "newer", "version": 9, "x": 1},
                                {"_id": "older", "version": 3, "x": 1}, {"_id": "whole", "a": 1, "b": 2}])
        result = await coll.bulk_write([
            ReplaceOne({"_id": "same"}, {"_id": "same", "v": 1}),                       # matched, unchanged
            UpdateOne({"_id": "newer", "version": {"$lt": 5}}, {"$set": {"version": 5, "x": 2}}),  # guard fails
            UpdateOne({"_id": "older", "version": {"$lt": 5}}, {"$set": {"version": 5, "x": 2}}),  # applied
            ReplaceOne({"_id": "missing"}, {"c": 3}),                                   # no upsert: nothing
            ReplaceOne({"_id": "whole"}, {"c": 3}, upsert=True),                        # replaced whole
            UpdateOne({"_id": "fresh"}, {"$set": {"n": 1}, "$setOnInsert": {"born": True}}, upsert=True),
            ReplaceOne({"_id": "fresh2"}, {"n": 2}, upsert=True),
        ], ordered=False)
        return result, {d["_id"]: d async for d in coll.find({})}

    result, stored = run_on_collection(stack, body)
    assert (result.matched_count, result.modified_count) == (3, 2)
    assert result.upserted_ids == {5: "fresh", 6: "fresh2"}
    assert stored == {
        "same": {"_id": "same", "v": 1},
        "newer": {"_id": "newer", "version": 9, "x": 1},
        "older": {"_id": "older", "version": 5, "x": 2},
        "whole": {"_id": "whole", "c": 3},
        "fresh": {"_id": "fresh", "n": 1, "born": True},
        "fresh2": {"_id": "fresh2", "n": 2},
    }


def test_a_customers_history_is_an_id_range_served_by_the_id_index(stack):
    """Patch 0005: a string range on `_id` is pushed down to the `_id_` index (unpatched: a scan of the whole
    collection on every history read, ~8 ms at 10,000 entries). Ids of other types and neighbouring
    customers' entries stay out of the answer."""
    client = mongo.mongo_client(stack)
    db = mongo.read_database(stack, client)
    coll = db[f"probe_{uuid.uuid4().hex[:8]}"]
    try:
        coll.insert_many([{"_id": history_entry_id(f"c{i % 50}", f"o{i}"), "customer_id": f"c{i % 50}"}
                          for i in range(2_000)])
        coll.insert_many([{"_id": 7, "customer_id": "c1"}, {"_id": {"k": "c1:"}, "customer_id": "c1"},
                          {"_id": "c1;o", "customer_id": "c1"}, {"_id": "c1:x", "customer_id": "c10"}])
        query = customer_history_filter("c1")
        plan = db.command("explain", {"find": coll.name, "filter": query})
        text = json.dumps(plan.get("queryPlanner"))
        assert "Index" in text and "_id" in text and "Seq Scan" not in text, text
        assert sorted(d["_id"] for d in coll.find(query)) == sorted(
            history_entry_id("c1", f"o{i}") for i in range(1, 2_000, 50))
    finally:
        coll.drop()
        client.close()
