"""Batch reads and writes of read-model documents on the MongoDB-compatible read store, as a MongoDB
user would write them: one `_id: {$in: [...]}` query per chunk of ids, one unordered bulk write.

The local stand-in (FerretDB 1.x on PostgreSQL) is patched to serve both from its `_id` index
(deploy/local/services/ferretdb_patches/); unpatched it scans the whole collection for an `$in`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

IDS_PER_QUERY = 1_000   # bounds one query's size; a batch's ids are usually fewer


async def find_by_ids(collection: AsyncCollection, ids: Sequence[str],
                      projection: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """{_id: document} for the ids that have a document."""
    unique = list(dict.fromkeys(ids))
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(unique), IDS_PER_QUERY):
        chunk = unique[start:start + IDS_PER_QUERY]
        async for doc in collection.find({"_id": {"$in": chunk}}, projection):
            found[doc["_id"]] = doc
    return found


async def bulk_write_unordered(collection: AsyncCollection, ops: Sequence[tuple[Any, Any]]) -> None:
    """One unordered bulk write of (document id, operation) pairs; raises pymongo's BulkWriteError, whose
    `index` of each write error points into `ops`."""
    if ops:
        await collection.bulk_write([op for _, op in ops], ordered=False)
