"""The query API's Redis cache, and the one call projections make to keep it honest.

Entries (key names from domain.read_models):
- `cache:order:<order id>` — a string: the JSON body of an order view (an answer read
  from the write model is never cached). Expires CACHE_TTL_S after it was stored.
- `cache:customer-orders:<customer id>` — a hash: field `<page>:<size>` -> the JSON body of that page
  of the customer's order history. The whole hash expires CACHE_TTL_S after its first field was
  stored, so no page is ever older than that, and dropping every page of a customer is one DEL.

Invalidation. After a projection has written an order's view or its customer's history, it calls

    await invalidate_order(redis, order_id, customer_id)   # redis.asyncio client
    invalidate_order(redis, order_id, customer_id)         # redis.Redis client
    invalidate_order(pipe, order_id, customer_id)          # queued on a pipeline with other writes

which deletes both keys with one DEL (no SCAN). Call it only after the read-model write succeeded.

Fill race. A reader that misses, reads MongoDB and then stores what it read could store a value
older than a projection write (and its DEL) that happened between its read and its store, and
serve it until the TTL. So a miss puts a lease (a unique token) where the value will go, in the
same round trip as the lookup, and the value is stored only if the lease is still there
(compare-and-set, one Lua script). A DEL in between removes the lease: the read is answered but not
cached. A reader that finds someone else's lease reads through without caching.

Failure. The cache is an optimisation, never a reason to fail a read: a lookup or fill that errs or
does not answer in time (the query API bounds each by a share of the request's budget) is skipped,
and `CacheGuard` then bypasses the cache for CACHE_BYPASS_S, so a cache that hangs costs one bounded
wait per period instead of one per read. Bypassing is always safe: the read goes to the read model
and nothing is stored. A lease left behind by a skipped release expires with its key.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from domain.read_models import CACHE_TTL_S, customer_history_cache_key, order_cache_key

LEASE_PREFIX = "lease:"
LEASE_TTL_MS = 10_000  # a lease on an order key outlives any read it guards; hash leases die with the hash
CACHE_BYPASS_S = 5.0


def invalidate_order(redis: Any, order_id: str, customer_id: str | None = None) -> Awaitable[int] | int | Any:
    """Delete the cached view of `order_id` and every cached history page of `customer_id`.

    Returns whatever the client's DEL returns: an awaitable with redis.asyncio, the number of keys
    deleted with redis.Redis, the pipeline itself when `redis` is a pipeline."""
    keys = [order_cache_key(order_id)]
    if customer_id:
        keys.append(customer_history_cache_key(customer_id))
    return redis.delete(*keys)


def customer_page_field(page: int, size: int) -> str:
    return f"{page}:{size}"


# KEYS[1] key; ARGV lease token, lease ttl ms. Returns the cached value (or another reader's lease), or nil
# after placing our lease.
_GET_OR_LEASE = """
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
# KEYS[1] key; ARGV lease, value, ttl s. Stores the value only while our lease is in place.
_FILL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""
# KEYS[1] hash; ARGV field, lease token, ttl s. The hash gets its TTL when it is created.
_HGET_OR_LEASE = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then return v end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return false
"""
# KEYS[1] hash; ARGV field, lease, value, ttl s.
_HFILL = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
  return 1
end
return 0
"""
# Drop our lease (the read failed); someone else's value or lease is left alone.
_RELEASE = """
if ARGV[1] == '' then
  if redis.call('GET', KEYS[1]) == ARGV[2] then return redis.call('DEL', KEYS[1]) end
elseif redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


@dataclass(frozen=True)
class Lookup:
    """What the cache had: `value` on a hit; otherwise `lease` if this reader may fill the entry."""

    key: str
    field: str | None
    value: str | None = None
    lease: str | None = None

    @property
    def hit(self) -> bool:
        return self.value is not None


class QueryCache:
    """Lease-guarded read-through cache over a redis.asyncio client (decode_responses=True)."""

    def __init__(self, redis: Any, ttl_s: int = CACHE_TTL_S) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self._get_or_lease = redis.register_script(_GET_OR_LEASE)
        self._fill = redis.register_script(_FILL)
        self._hget_or_lease = redis.register_script(_HGET_OR_LEASE)
        self._hfill = redis.register_script(_HFILL)
        self._release = redis.register_script(_RELEASE)

    async def order(self, order_id: str) -> Lookup:
        key, lease = order_cache_key(order_id), _new_lease()
        found = await self._get_or_lease(keys=[key], args=[lease, LEASE_TTL_MS])
        return _lookup(key, None, found, lease)

    async def customer_page(self, customer_id: str, page: int, size: int) -> Lookup:
        key, field, lease = customer_history_cache_key(customer_id), customer_page_field(page, size), _new_lease()
        found = await self._hget_or_lease(keys=[key], args=[field, lease, self.ttl_s])
        return _lookup(key, field, found, lease)

    async def fill(self, lookup: Lookup, value: str) -> bool:
        """Store `value` for a miss, unless the entry was invalidated since the lookup."""
        if lookup.lease is None:
            return False
        if lookup.field is None:
            done = await self._fill(keys=[lookup.key], args=[lookup.lease, value, self.ttl_s])
        else:
            done = await self._hfill(keys=[lookup.key], args=[lookup.field, lookup.lease, value, self.ttl_s])
        return bool(done)

    async def release(self, lookup: Lookup) -> None:
        """Give up a miss's lease without storing anything (nothing cacheable was read)."""
        if lookup.lease is not None:
            await self._release(keys=[lookup.key], args=[lookup.field or "", lookup.lease])


def _new_lease() -> str:
    return LEASE_PREFIX + uuid.uuid4().hex


def _lookup(key: str, field: str | None, found: str | None, lease: str) -> Lookup:
    if found is None:
        return Lookup(key, field, lease=lease)
    if found.startswith(LEASE_PREFIX):  # another reader is filling it: read through, do not cache
        return Lookup(key, field)
    return Lookup(key, field, value=found)


class CacheGuard:
    """Whether to use the cache now: not for `bypass_s` after it last failed."""

    def __init__(self, bypass_s: float = CACHE_BYPASS_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.bypass_s = bypass_s
        self.clock = clock
        self._until = float("-inf")

    def usable(self) -> bool:
        return self.clock() >= self._until

    def failed(self) -> None:
        self._until = self.clock() + self.bypass_s
