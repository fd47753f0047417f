"""What every query route shares: the JSON answer, the read-through cache, and the request's parameters."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import orjson
from fastapi import Depends, Path, Query, Request
from fastapi.responses import Response
from prometheus_client import Counter

from app.queries import reads
from app.queries.cache import Lookup
from app.queries.freshness import FreshnessReader
from app.queries.own_writes import Announcements
from app.queries.stores import Deadline, Stores, request_deadline
from domain.freshness import Freshness

CACHE_LOOKUPS = Counter("query_cache", "Query cache lookups by query and result (hit, miss, error: failed or "
                        "no answer in time; bypass: skipped after a recent failure)", ["query", "result"])
ID_PATTERN = r"^[A-Za-z0-9_.:-]+$"
OrderId = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN, description="Order id")]
CustomerId = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN, description="Customer id")]
PageNo = Annotated[int, Query(ge=1, le=reads.MAX_RESULT_WINDOW, description="1-based page number")]
PageSize = Annotated[int, Query(ge=1, le=100, description="Results per page (1-100)")]
RequestDeadline = Annotated[Deadline, Depends(request_deadline)]
JSON = "application/json"


def json_response(body: bytes | str, status_code: int = 200, cache: str | None = None) -> Response:
    return Response(body, status_code=status_code, media_type=JSON, headers={"X-Cache": cache} if cache else None)


def dumps(body: Any) -> bytes:
    return orjson.dumps(body)


def with_freshness(body: bytes, freshness: Freshness) -> bytes:
    """The body with the answer's `freshness` and `lag_s`, decided for this read (a cached body included)."""
    return dumps({**orjson.loads(body), **freshness.fields()})


def freshness_reader(request: Request) -> FreshnessReader:
    return request.app.state.freshness


def announcements(request: Request) -> Announcements:
    return request.app.state.announcements


async def read_through(query: str, s: Stores, deadline: Deadline, key: Callable[[], Awaitable[Lookup]],
                       read: Callable[[], Awaitable[bytes | None]]) -> tuple[bytes, str] | None:
    """A cache hit, or `read`'s body (cached); with the `X-Cache` value (hit, miss, or bypass without the
    cache). None when `read` found nothing: the caller then falls back, and nothing is cached."""
    usable = s.cache_guard.usable()
    lookup = await s.cache_call(deadline, key)
    if lookup is not None:
        CACHE_LOOKUPS.labels(query, "hit" if lookup.hit else "miss").inc()
    else:
        CACHE_LOOKUPS.labels(query, "error" if usable else "bypass").inc()
    if lookup is not None and lookup.hit:
        return lookup.value.encode(), "hit"
    body: bytes | None = None
    try:
        body = await read()
    finally:
        if lookup is not None:  # fill the miss, or give its lease back when there is nothing to cache
            await s.cache_call(deadline, (lambda: s.cache.release(lookup)) if body is None else
                               (lambda: s.cache.fill(lookup, body.decode())))
    if body is None:
        return None
    return body, "miss" if lookup is not None else "bypass"
