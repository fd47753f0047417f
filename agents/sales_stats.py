"""Exact sales figures from order-events: product stats (MongoDB + the search index's purchase_count)
and the live sales dashboard (Redis).

Exactness: every order's contribution to the counters (per-product purchases and units, per-day and
per-hour order count and revenue) is kept in a per-order ledger in Redis. One Lua script per batch
compares each order's ledger sequence with the one the batch read, subtracts the order's previous
contribution and adds the new one, atomically. Counters are therefore sums of current per-order
contributions: a redelivered or replayed event finds the ledger already past it and changes nothing.
Product figures are then copied as absolute values (with a version that only grows) into MongoDB
and Elasticsearch. A product leaves the dirty set only once MongoDB is read back at the version that
was copied (the local read store can lose one of two concurrent conditional updates), the search index
has taken the copy as a compare-and-set on the document's sequence number, and that version is still
the newest in Redis (one atomic check), so neither a concurrent batch of another worker nor a lost
concurrent update in the read store can leave an old copy behind: the product stays dirty and is copied
again on the next batch or tick.

Versions (`cqrs rebuild sales-stats`): everything lives under one version's Redis prefix and product-stats
collection, which the live worker points at the serving version before each batch and tick. Purchase
counts copied into the search index carry the sales version and only replace a copy of the same or an
older version, so a worker still copying the previous version's figures never undoes a newer copy.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_bulk
from pymongo import InsertOne, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from agents import failpoints
from agents.engine import Projection
from agents.outages import outage_store
from agents.read_store import bulk_write_unordered, find_by_ids
from agents.search_bulk import bulk_failures, bulk_item
from agents.read_model_versions import ServingRecord
from domain.read_models import PRODUCTS_ALIAS, product_stats_collection, sales_prefix
from domain.views import OrderFacts, apply_order_facts, sales_contributions

LEDGER_TTL_S = 35 * 24 * 3600
DAY_TTL_S = 35 * 24 * 3600
T = TypeVar("T")
log = logging.getLogger("cqrs.projection")
DIRTY = "dirty-products"   # a set under each version's prefix
CLEAN_IF_UNCHANGED = """
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1] .. ARGV[i], 'version') == ARGV[i + 1] then
    removed = removed + redis.call('SREM', KEYS[2], ARGV[i])
  end
end
return removed
"""

APPLY_CONTRIBUTIONS = """
local prefix, ledger_ttl, day_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local i, applied = 4, 0
local touched_products = {}
while i <= #ARGV do
  local oid, expected, newseq, state, n = ARGV[i], tonumber(ARGV[i+1]), ARGV[i+2], ARGV[i+3], tonumber(ARGV[i+4])
  i = i + 5
  local lkey = prefix .. 'ledger:' .. oid
  local cur = tonumber(redis.call('HGET', lkey, 'seq') or '0')
  if cur == expected then
    local old = redis.call('HGET', lkey, 'contrib')
    local changes = {}
    if old then
      local o = cjson.decode(old)
      for j = 1, #o, 3 do
        local k = o[j] .. '\\0' .. o[j+1]
        changes[k] = (changes[k] or 0) - tonumber(o[j+2])
      end
    end
    local new = {}
    for j = 0, n - 1 do
      local key, fld, amount = ARGV[i + 3*j], ARGV[i + 3*j + 1], ARGV[i + 3*j + 2]
      local k = key .. '\\0' .. fld
      changes[k] = (changes[k] or 0) + tonumber(amount)
      new[#new + 1] = key; new[#new + 1] = fld; new[#new + 1] = amount
    end
    for k, delta in pairs(changes) do
      local sep = string.find(k, '\\0', 1, true)
      local key, fld = string.sub(k, 1, sep - 1), string.sub(k, sep + 1)
      local full = prefix .. key
      if delta ~= 0 then redis.call('HINCRBY', full, fld, delta) end
      if string.sub(key, 1, 8) == 'product:' then
        if not touched_products[full] then
          redis.call('HINCRBY', full, 'version', 1)
          touched_products[full] = true
          redis.call('SADD', prefix .. 'dirty-products', string.sub(key, 9))
        end
      elseif string.sub(key, 1, 4) == 'day:' then
        redis.call('EXPIRE', full, day_ttl)
      end
    end
    redis.call('HSET', lkey, 'seq', newseq, 'state', state, 'contrib', cjson.encode(new))
    redis.call('EXPIRE', lkey, ledger_ttl)
    applied = applied + 1
  end
  i = i + 3*n
end
return applied
"""


class SalesStats(Projection):
    name = "sales-stats"
    sinks = "redis+mongodb+elasticsearch"

    def __init__(self, redis, db: AsyncDatabase, es: AsyncElasticsearch | None, alias: str = PRODUCTS_ALIAS,
                 sync_limit: int = 2000, version: int = 1, copy_on_write: bool = True,
                 copy_interval_s: float = 0.0) -> None:
        self.redis = redis
        self.copy_on_write = copy_on_write
        # Copies after a write wait until this long after the previous copy: under load a hot product's
        # figure is copied once per interval instead of once per batch (each copy is a read and a write of
        # the product in MongoDB and Elasticsearch); the counters themselves are exact in Redis at once.
        self.copy_interval_s = copy_interval_s
        self.next_copy = 0.0
        self.copies_waiting: set[str] = set()   # stores whose copies wait for them to come back
        self.db = db
        self.es = es
        self.alias = alias
        self.sync_limit = sync_limit
        self.use_version(version)
        self._script = redis.register_script(APPLY_CONTRIBUTIONS)
        self._clean = redis.register_script(CLEAN_IF_UNCHANGED)

    def use_version(self, version: int) -> None:
        self.version = version
        self.prefix = sales_prefix(version)
        self.stats = product_stats_collection(version)

    async def target_serving(self, record: ServingRecord) -> None:
        self.use_version(record.serving)

    def as_stored(self, state: Any) -> Any:
        """The state once written: the ledger is at its new sequence (a bulk replay keeps states between writes)."""
        _, new_seq, facts = state
        return new_seq, new_seq, facts

    async def load(self, aggregate_ids: list[str]) -> dict[str, Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for oid in aggregate_ids:
                pipe.hmget(f"{self.prefix}ledger:{oid}", "seq", "state")
            rows = await pipe.execute()
        states = {}
        for oid, (seq, state) in zip(aggregate_ids, rows):
            if seq is not None:
                states[oid] = (int(seq), int(seq), OrderFacts.from_ledger(json.loads(state)) if state else None)
        return states

    def last_seq(self, state: Any) -> int:
        return state[1] if state else 0

    async def references(self, events: list[Mapping[str, Any]]) -> None:
        return None

    def apply(self, state: Any, event: Mapping[str, Any], refs: Any) -> Any:
        """State is (ledger seq read at batch start, new seq, facts)."""
        read_seq, _, facts = state if state else (0, 0, None)
        return read_seq, event["sequence_number"], apply_order_facts(facts, event)

    async def write(self, changed: dict[str, Any]) -> dict[str, str]:
        args: list[Any] = [self.prefix, LEDGER_TTL_S, DAY_TTL_S]
        for oid, (read_seq, new_seq, facts) in changed.items():
            contributions = sales_contributions(facts)
            args += [oid, read_seq, new_seq, json.dumps(facts.as_ledger()), len(contributions)]
            for composite, amount in contributions.items():
                key, fld = composite.split("|", 1)
                args += [key, fld, amount]
        await self._script(args=args)
        failpoints.reach("sales-stats.between-writes")
        if self.copy_on_write and time.monotonic() >= self.next_copy:
            await self.sync_products(probe=False)
        return {}

    async def _copy_purchase_counts(self, counts: dict[str, tuple[int, int]]) -> set[str]:
        """Copy purchase counts ({product: (count, counter version)}) into the search index as a
        compare-and-set on the document's sequence number (no scripting needed), each only over a copy of
        an older sales version, or of this version at an older counter version: two workers copying one
        product never leave the older figure behind. Returns the products whose copy is not in place (not
        indexed yet, a concurrent change, or a newer version's). A copy the bulk answered without an error
        is in place: it was written over exactly the state the mget saw, and nothing else writes these
        fields except another such copy, which only raises them, so it is not read back (a realtime read
        of a document just written makes Elasticsearch refresh the shard for it)."""
        fields = ["purchase_count", "sales_version", "purchase_count_version"]
        current = await self.es.mget(index=self.alias, ids=list(counts), source_includes=fields)
        pending: set[str] = set()
        actions: list[dict] = []
        for doc in current["docs"]:
            pid = doc["_id"]
            count, version = counts[pid]
            if not doc.get("found") or (doc["_source"].get("sales_version") or 0) > self.version:
                pending.add(pid)
                continue
            if self._holds(doc["_source"], version):
                continue
            actions.append({"_op_type": "update", "_index": doc["_index"], "_id": pid, "if_seq_no": doc["_seq_no"],
                            "if_primary_term": doc["_primary_term"],
                            "doc": {"purchase_count": count, "sales_version": self.version,
                                    "purchase_count_version": version}})
        if actions:
            _, errors = await async_bulk(self.es, actions, chunk_size=len(actions), raise_on_error=False,
                                         refresh=False)
            # 404 (deleted meanwhile) and 409 (changed since the mget) leave that copy pending; anything
            # else a document is rejected with is raised (an outage status as an outage).
            rejected = bulk_failures(errors, expected=(404, 409))
            if rejected:
                pid, error = next(iter(rejected.items()))
                raise RuntimeError(f"search index rejected {len(rejected)} purchase count(s), {pid}'s: {error}")
            pending |= {bulk_item(error)["_id"] for error in errors}
        return pending

    def _holds(self, source: Mapping[str, Any], version: int) -> bool:
        """The indexed copy is this sales version's, at counter version `version` or newer."""
        return source.get("sales_version") == self.version and (source.get("purchase_count_version") or 0) >= version

    async def tick(self) -> None:
        await self.sync_products()

    async def sync_products(self, probe: bool = True) -> None:
        """Copy the counters of products changed since their last copy into MongoDB and Elasticsearch.

        Each copy is on its own: a store that is unavailable keeps its products dirty (copied again on the
        next batch or tick) without holding up the other store, nor the counting in Redis — the ledger is
        this projection's progress, the copies follow it."""
        self.next_copy = time.monotonic() + self.copy_interval_s
        product_ids = await self.redis.srandmember(self.prefix + DIRTY, self.sync_limit)
        if not product_ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for pid in product_ids:
                pipe.hmget(f"{self.prefix}product:{pid}", "purchase_count", "units_sold", "version")
            rows = await pipe.execute()
        figures = {pid: (int(c or 0), int(u or 0), int(v or 0)) for pid, (c, u, v) in zip(product_ids, rows)}
        stored = await self._while_available("mongodb", lambda: self._copy_stats(figures), {}, probe)
        missing: set[str] = set()
        if self.es is not None:
            counts = {pid: (c, v) for pid, (c, _, v) in figures.items()}
            missing = await self._while_available("elasticsearch", lambda: self._copy_purchase_counts(counts),
                                                  set(figures), probe)
        done = [pid for pid in product_ids
                if pid not in missing and stored.get(pid, {}).get("version", -1) >= figures[pid][2]]
        if done:
            await self._clean(keys=[f"{self.prefix}product:", self.prefix + DIRTY],
                              args=[a for pid in done for a in (pid, figures[pid][2])])

    async def _while_available(self, store: str, copy: Callable[[], Awaitable[T]], otherwise: T, probe: bool) -> T:
        """The copy's result, or `otherwise` while `store` is unavailable (anything else is raised). A store
        known to be away is only tried again when `probe` (the periodic tick), so batches never wait on it."""
        if store in self.copies_waiting and not probe:
            return otherwise
        try:
            result = await copy()
        except Exception as exc:
            if outage_store(exc) is None:
                raise
            if store not in self.copies_waiting:
                log.warning("sales-stats: %s unavailable (%s); counting goes on, its copies wait", store, exc)
                self.copies_waiting.add(store)
            return otherwise
        if store in self.copies_waiting:
            log.warning("sales-stats: %s is back; copying the figures it missed", store)
            self.copies_waiting.discard(store)
        return result

    async def _copy_stats(self, figures: dict[str, tuple[int, int, int]]) -> dict[str, dict[str, Any]]:
        """Write product stats into MongoDB, each only over an older version; returns what MongoDB then holds."""
        # Conditional on `version`, so a slower worker never overwrites newer figures. Missing documents
        # are inserted (a concurrent insert of the same product loses with a duplicate key, harmlessly).
        existing = {d["_id"] async for d in self.db[self.stats].find({"_id": {"$in": list(figures)}}, {"_id": 1})}
        ops = [(pid, UpdateOne({"_id": pid, "version": {"$lt": v}},
                               {"$set": {"purchase_count": c, "units_sold": u, "version": v}})
                if pid in existing else
                InsertOne({"_id": pid, "product_id": pid, "purchase_count": c, "units_sold": u, "version": v}))
               for pid, (c, u, v) in figures.items()]
        try:
            await bulk_write_unordered(self.db[self.stats], ops)
        except BulkWriteError as exc:
            real = [e for e in exc.details.get("writeErrors", []) if e.get("code") != 11000]
            if real:
                raise
        return await find_by_ids(self.db[self.stats], list(figures), {"version": 1})
