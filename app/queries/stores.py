"""The stores the query API reads, and the time budget one request has for all of them together.

Deadline. A request gets `QUERY_TIMEOUT_S` from its start for every store call it makes: GetOrder may
ask MongoDB for the serving version, then for the view, then PostgreSQL for an order not projected
yet, and it still answers — or fails with `503 service_unavailable` naming the store — within that
budget, however many calls it made and whatever each one takes. Every call runs under
`asyncio.timeout(<what is left>)`: that bound is hard, the client libraries' own timeouts and retries
(redis-py retries a timed-out command, elastic-transport a dropped connection, pymongo waits for
server selection) cannot stretch it, and the drivers discard the connection of a cancelled call
rather than reuse it mid-exchange.
The libraries are also handed the time left where they take one (pymongo's `timeout()` block, which
the server gets as maxTimeMS; Elasticsearch's request_timeout; the pool's wait), so that they
usually give up first, with their own error.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
import logging
from typing import Any, NoReturn, TypeVar

import pymongo
from fastapi import Request
from psycopg_pool import AsyncConnectionPool
from redis.exceptions import RedisError

from app.queries.cache import CacheGuard, QueryCache
from agents.read_model_versions import ServingCache, ServingRecord
from app.settings import Settings
from connectors import elasticsearch, mongo, postgres
from connectors.redis import async_redis_client

log = logging.getLogger("app.queries.api")
T = TypeVar("T")

# While MongoDB is away the serving pointer falls back to the last record read (ServingCache), so its
# read may take only this share of what is left: the read it serves gets the rest (the sales
# dashboard then still answers from Redis).
POINTER_SHARE = 0.5
# The cache is an optimisation: a lookup or fill may take this share of the budget (at least
# CACHE_FLOOR_S), and a failure bypasses the cache for a while (CacheGuard) instead of failing the read.
CACHE_SHARE = 0.2
# pymongo's own time-out fires a little after the time it is given; this much of the budget is kept for
# that and for answering.
PYMONGO_MARGIN_S = 0.2
CACHE_FLOOR_S = 0.25


class StoreUnavailable(Exception):
    """A store did not answer within the request's budget; answered 503 naming `service`."""

    def __init__(self, service: str, reason: str) -> None:
        self.service = service
        super().__init__(f"{service}: {reason}")


class Deadline:
    """What is left of one request's budget; every store call of the request runs `within` it."""

    __slots__ = ("budget_s", "_end", "_clock", "_spent")

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_s = budget_s
        self._clock = clock
        self._end = clock() + budget_s
        self._spent: dict[str, float] = {}  # seconds each store took so far

    def remaining(self) -> float:
        return max(0.0, self._end - self._clock())

    @contextlib.asynccontextmanager
    async def within(self, service: str, limit: float | None = None) -> AsyncIterator[float]:
        """Cancel the block when the budget (or `limit`, if sooner) runs out, raising StoreUnavailable;
        yields the seconds the block has, to hand to the client library. With nothing left, the block
        is not run and the store that took the budget is named, not the one that was never asked."""
        seconds = self.remaining() if limit is None else min(limit, self.remaining())
        if seconds <= 0:
            self._nothing_left(service)
        started = self._clock()
        try:
            async with asyncio.timeout(seconds):
                yield seconds
        except TimeoutError:
            raise StoreUnavailable(service, f"no answer within {seconds:.2f}s "
                                            f"(request budget {self.budget_s:g}s)") from None
        finally:
            self._spent[service] = self._spent.get(service, 0.0) + self._clock() - started

    @contextlib.asynccontextmanager
    async def mongodb(self, share: float = 1.0) -> AsyncIterator[None]:
        """The budget (`share` of what is left) for MongoDB calls, enforced by pymongo itself: its client-side
        operation timeout bounds server selection, connection checkout and every read, and raises its own
        error (answered 503 naming mongodb). Never cancelled from outside: cancelling the async driver
        while it selects a server leaves its topology lock broken, and every later call of the process
        then hangs — the fault suite saw a query API stay unavailable after MongoDB had come back."""
        seconds = self.remaining() * share - PYMONGO_MARGIN_S
        if seconds <= 0:
            self._nothing_left("mongodb")
        started = self._clock()
        try:
            with pymongo.timeout(seconds):
                yield
        finally:
            self._spent["mongodb"] = self._spent.get("mongodb", 0.0) + self._clock() - started

    def _nothing_left(self, service: str) -> NoReturn:
        slowest = max(self._spent, key=self._spent.__getitem__, default=service)
        raise StoreUnavailable(slowest, f"took the request's {self.budget_s:g}s budget; {service} not asked")

    def cache_limit(self) -> float:
        return max(CACHE_FLOOR_S, self.budget_s * CACHE_SHARE)


class Stores:
    """The clients one query API process shares between requests."""

    def __init__(self, settings: Settings) -> None:
        self.query_timeout_s = settings.query_timeout_s
        timeout_ms = int(min(settings.connect_timeout_s, settings.query_timeout_s) * 1000)
        self.mongo = mongo.async_mongo_client(settings, serverSelectionTimeoutMS=timeout_ms,
                                              connectTimeoutMS=timeout_ms,
                                              socketTimeoutMS=int(settings.query_timeout_s * 1000))
        self.db = self.mongo[settings.mongo_database]
        self.es = elasticsearch.async_es_client(settings, request_timeout=settings.query_timeout_s,
                                                max_retries=1, retry_on_timeout=False)
        self.redis = async_redis_client(settings)
        self.cache = QueryCache(self.redis)
        self.cache_guard = CacheGuard()
        self.pool = AsyncConnectionPool(postgres.conninfo(settings), min_size=1, max_size=settings.db_pool_max,
                                        open=False, timeout=settings.query_timeout_s,
                                        kwargs={"autocommit": True,
                                                "connect_timeout": postgres.connect_timeout(settings)})
        self.products_alias = settings.es_products_alias
        self.serving = ServingCache(self.db)

    def deadline(self) -> Deadline:
        """A new request's budget."""
        return Deadline(self.query_timeout_s)

    async def cache_call(self, deadline: Deadline, call: Callable[[], Awaitable[T]]) -> T | None:
        """One Redis call the answer can do without (the cache, freshness reports), within the cache's share
        of the budget; None when the cache is bypassed or fails. A failure (an error, or no answer in time)
        bypasses Redis for a while (CacheGuard): reads never fail for it."""
        if not self.cache_guard.usable() or deadline.remaining() <= 0:
            return None
        try:
            async with deadline.within("redis", deadline.cache_limit()):
                return await call()
        except (RedisError, StoreUnavailable) as exc:
            log.warning("query cache bypassed for %gs: %s: %s", self.cache_guard.bypass_s, type(exc).__name__, exc)
            self.cache_guard.failed()
            return None

    async def serving_record(self, projection: str, deadline: Deadline) -> ServingRecord:
        """Which version of `projection` serves (cached for a second; the last one while MongoDB is away)."""
        async with deadline.mongodb(share=POINTER_SHARE):
            return await self.serving.get(projection)

    async def open(self) -> None:
        # Not waiting for PostgreSQL: the read models can be served while the write model is away;
        # /readyz reports each store.
        await self.pool.open(wait=False)

    async def close(self) -> None:
        for closing in (self.pool.close(), self.es.close(), self.redis.aclose(), self.mongo.close()):
            with contextlib.suppress(Exception):
                await closing

    async def checks(self, timeout: float = 2.0) -> dict[str, str]:
        async def postgres() -> None:
            async with self.pool.connection(timeout=timeout) as conn:
                await conn.execute("select 1")

        async def elasticsearch() -> None:
            if not await self.es.options(request_timeout=timeout).ping():
                raise ConnectionError("no answer")

        async def mongodb() -> None:
            with pymongo.timeout(timeout):  # bounded by pymongo itself, never cancelled (see Deadline.mongodb)
                await self.db.command("ping")

        probes: dict[str, Awaitable[Any]] = {"elasticsearch": elasticsearch(), "redis": self.redis.ping(),
                                             "postgresql": postgres()}
        results = await asyncio.gather(mongodb(), *(asyncio.wait_for(p, timeout) for p in probes.values()),
                                       return_exceptions=True)
        probes = {"mongodb": None, **probes}
        return {name: "ok" if not isinstance(r, BaseException) else
                (f"{type(r).__name__}: {r}".splitlines()[0][:200] if str(r) else type(r).__name__)
                for name, r in zip(probes, results)}


def stores(request: Request) -> Stores:
    return request.app.state.stores


async def request_deadline(request: Request) -> Deadline:
    """FastAPI dependency: the budget of this request, started as it is routed (a coroutine: FastAPI runs a
    plain function in its thread pool, a thread hand-off on every request)."""
    return stores(request).deadline()
