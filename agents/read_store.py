"""Batch reads and writes of read-model documents on the MongoDB-compatible read store, as a MongoDB
user would write them: one `_id: {$in: [...]}` query per chunk of ids, one unordered bulk write per
batch. A bulk load (a rebuild's flush of 20,000 documents) may run as a few concurrent unordered bulks,
as parallel loaders do on MongoDB too; a document's operations always stay in one of them.

The local stand-in (FerretDB 1.x on PostgreSQL) is patched to serve both from its `_id` index
(deploy/local/services/ferretdb_patches/); unpatched it scans the whole collection for an `$in`.
"""
from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

IDS_PER_QUERY = 1_000   # bounds one query's size; a batch's ids are usually fewer
MIN_PART = 64           # below this many operations per part, one bulk


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


async def bulk_write_unordered(collection: AsyncCollection, ops: Sequence[tuple[Any, Any]], parts: int = 1) -> None:
    """Unordered bulk write of (document id, operation) pairs, as one bulk or `parts` concurrent ones.
    Raises BulkWriteError with the write errors of every part, each `index` pointing into `ops`, as one
    unordered bulk write would."""
    parts = max(1, min(parts, len(ops) // MIN_PART))
    if parts == 1:
        if ops:
            await collection.bulk_write([op for _, op in ops], ordered=False)
        return
    groups: list[list[int]] = [[] for _ in range(parts)]
    for i, (doc_id, _) in enumerate(ops):
        groups[hash(doc_id) % parts].append(i)
    groups = [g for g in groups if g]
    results = await asyncio.gather(*(collection.bulk_write([ops[i][1] for i in g], ordered=False) for g in groups),
                                   return_exceptions=True)
    write_errors: list[dict[str, Any]] = []
    details: dict[str, Any] = {"writeErrors": write_errors, "writeConcernErrors": []}
    for group, result in zip(groups, results):
        if isinstance(result, BulkWriteError):
            for error in result.details.get("writeErrors", []):
                write_errors.append({**error, "index": group[error["index"]]})
            details["writeConcernErrors"] += result.details.get("writeConcernErrors", [])
        elif isinstance(result, BaseException):
            raise result
    if write_errors or details["writeConcernErrors"]:
        write_errors.sort(key=lambda e: e["index"])
        raise BulkWriteError(details)
