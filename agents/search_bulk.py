"""Per-document results of Elasticsearch bulk writes, the same for every projection that writes the search index.

Bulk writes go through `elasticsearch.helpers.async_bulk` / `async_streaming_bulk` with
`raise_on_error=False`: a request that fails as a whole (no connection, a time-out, an error status)
raises from the helper, and the documents Elasticsearch turned away one by one come back as error items.
`bulk_failures` turns those into {document id: "type: reason"} — except a document turned away with a
"not now" status (429 `es_rejected_execution_exception` from a full write queue, 502-504), which is a
store outage like the same status for the whole request, and is raised as one.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
from elasticsearch import ApiError

from agents.outages import UNAVAILABLE_STATUS


class DocumentsUnavailable(ApiError):
    """Elasticsearch answered a bulk request but turned documents away with a "not now" status. An
    ApiError with that status, so `agents.outages.outage_store` tells it apart as an Elasticsearch outage:
    the write is waited out and repeated, its documents are not dead-lettered."""

    def __init__(self, status: int, failures: Mapping[str, str]) -> None:
        first_id, first = next(iter(failures.items()))
        # The request itself was answered (200): the status is the documents'; no node failed it.
        meta = ApiResponseMeta(status=status, http_version="1.1", headers=HttpHeaders(), duration=0.0,
                               node=NodeConfig("http", "bulk-item", 0))
        super().__init__(f"{len(failures)} document(s) turned away, first {first_id}: {first}", meta,
                         {"failures": dict(failures)})


def bulk_item(error: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
    """The result of one action in a bulk helper's error item (`{"update": {...}}` → `{...}`)."""
    return next(iter(error.values()))


def bulk_failures(errors: Iterable[Mapping[str, Mapping[str, Any]]],
                  expected: Collection[int] = ()) -> dict[str, str]:
    """{document id: "type: reason"} for the error items of a bulk helper, leaving out those whose status is
    in `expected` (outcomes the caller handles, such as a compare-and-set's 409). Raises the request's own
    error for items of a request that failed as a whole (`raise_on_exception=False`), and
    DocumentsUnavailable when any document was turned away with 429/502/503/504."""
    failures: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    unavailable_status = 0
    for error in errors:
        item = bulk_item(error)
        if isinstance(item.get("exception"), BaseException):
            raise item["exception"]
        status = item.get("status", 500)
        if status in expected:
            continue
        reason = item.get("error") or {}
        text = f"{reason.get('type')}: {reason.get('reason')}" if isinstance(reason, Mapping) else str(reason)
        if status in UNAVAILABLE_STATUS:
            unavailable[item["_id"]] = text
            unavailable_status = unavailable_status or status
        else:
            failures[item["_id"]] = text
    if unavailable:
        raise DocumentsUnavailable(unavailable_status, unavailable)
    return failures
