"""Product search documents (Elasticsearch, behind the `products` alias) from product-events.

State is the indexed document (it carries `last_seq`), read with one mget per batch and written with
one _bulk of partial updates (`elasticsearch.helpers.async_bulk`), so `purchase_count` (kept by the
sales projection) is never overwritten. Documents rejected one by one are dead-lettered
(`agents.search_bulk`).
Reads and writes go to one concrete index (`index`): the live worker resolves the alias to it before
each batch, so a batch never straddles an alias swap; a rebuild points it at the index it builds.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from elasticsearch import AsyncElasticsearch, BadRequestError, NotFoundError
from elasticsearch.helpers import async_bulk, async_scan

from agents.engine import Projection
from agents.search_bulk import DocumentsUnavailable, bulk_failures
from agents.read_model_versions import ServingRecord
from domain.read_models import PRODUCTS_ALIAS, PRODUCTS_MAPPING, products_index
from domain.views import apply_product_event, search_document_changed

OWNED_ELSEWHERE = ("purchase_count", "sales_version", "purchase_count_version")
# How often the serving index makes writes searchable: a change is in search results at most this long
# after the worker wrote it. A refresh costs only when writes came in since the last one, and since the
# documents stopped carrying stock levels few do (make bench-system at 25 orders/s: search visible p50
# 516-547 ms with 250 ms against 681-686 ms with 500 ms, Elasticsearch 4.5-5.0 ms of CPU per order with
# either; with 1 s, before, search could not be visible within 1 s at the 99th percentile).
SERVING_REFRESH = "250ms"


async def ensure_products_index(es: AsyncElasticsearch, alias: str = PRODUCTS_ALIAS) -> str:
    """Create `<alias>-v1` with the explicit mapping and point the alias at it, unless the alias exists.
    Safe to run from several workers at once (the product and sales workers start together)."""
    if await es.indices.exists_alias(name=alias):
        # Fields added to the mapping since the index was created (e.g. `sales_version`) are added in
        # place, and the serving refresh interval follows this release's; putting what the index already
        # has is a no-op.
        await es.indices.put_mapping(index=alias, properties=PRODUCTS_MAPPING["properties"])
        await es.indices.put_settings(index=alias, settings={"refresh_interval": SERVING_REFRESH})
        await drop_stock_levels(es, alias)
        return alias
    index = products_index(alias, 1)
    await create_products_index(es, index)
    await es.indices.put_alias(index=index, name=alias)
    return alias


async def drop_stock_levels(es: AsyncElasticsearch, alias: str) -> int:
    """Removes the `stock` level that documents indexed by earlier releases carry: it is no longer kept up to
    date (domain.read_models), so it must not stay behind, stale. Each such document is written again
    without it, only if unchanged since it was read (`if_seq_no`): a document the live worker updates
    meanwhile keeps its level until the next start. Idempotent, and one empty search once done. (The
    local cluster has no update-by-query: its reindex and painless modules are left out.) Returns how
    many documents it changed."""
    actions = []
    try:
        async for hit in async_scan(es, index=alias, query={"query": {"exists": {"field": "stock"}}},
                                    seq_no_primary_term=True):
            actions.append({"_op_type": "index", "_index": hit["_index"], "_id": hit["_id"],
                            "if_seq_no": hit["_seq_no"], "if_primary_term": hit["_primary_term"],
                            "_source": {k: v for k, v in hit["_source"].items() if k != "stock"}})
    except NotFoundError:
        return 0
    if not actions:
        return 0
    written, _ = await async_bulk(es, actions, raise_on_error=False, refresh=True)
    return written


async def create_products_index(es: AsyncElasticsearch, index: str, refresh_interval: str = SERVING_REFRESH) -> None:
    """Create one version's index with the explicit mapping; an existing one is left as it is. A bulk
    rebuild creates it with refresh off and turns refresh on before the switch."""
    try:
        await es.indices.create(index=index, mappings=PRODUCTS_MAPPING,
                                settings={"number_of_shards": 1, "number_of_replicas": 0,
                                          "refresh_interval": refresh_interval})
    except BadRequestError as exc:
        if exc.error != "resource_already_exists_exception":
            raise


async def aliased_index(es: AsyncElasticsearch, alias: str) -> str:
    """The one concrete index `alias` points at."""
    found = list(await es.indices.get_alias(name=alias))
    if len(found) != 1:
        raise RuntimeError(f"search alias {alias!r} points at {len(found)} indices ({', '.join(found)}), not one")
    return found[0]


class ProductSearch(Projection):
    name = "product-search"
    sinks = "elasticsearch"

    def __init__(self, es: AsyncElasticsearch, alias: str = PRODUCTS_ALIAS, index: str | None = None) -> None:
        self.es = es
        self.alias = alias
        self.index = index or alias

    async def target_serving(self, record: ServingRecord) -> None:
        """Write to the index the alias points at now (a switch swaps the alias while this worker waits)."""
        self.index = await aliased_index(self.es, self.alias)

    async def load(self, aggregate_ids: list[str]) -> dict[str, Any]:
        """The indexed documents by id. A document the cluster could not read (its shard not available yet,
        as right after a restart) is not "absent": reading it as absent would lose the stored sequence, so
        it is raised as an outage and the load is repeated."""
        try:
            resp = await self.es.mget(index=self.index, ids=aggregate_ids)
        except NotFoundError:
            return {}
        unreadable = {d["_id"]: f"{d['error'].get('type')}: {d['error'].get('reason')}"
                      for d in resp["docs"] if d.get("error")}
        if unreadable:
            raise DocumentsUnavailable(503, unreadable)
        return {d["_id"]: d["_source"] for d in resp["docs"] if d.get("found")}

    def last_seq(self, state: Any) -> int:
        return (state or {}).get("last_seq", 0)

    async def references(self, events: list[Mapping[str, Any]]) -> None:
        return None

    def apply(self, state: Any, event: Mapping[str, Any], refs: Any) -> Any:
        return apply_product_event(state, event)

    def needs_write(self, stored: Any, state: Any) -> bool:
        return search_document_changed(stored, state)

    async def write(self, changed: dict[str, Any]) -> dict[str, str]:
        actions = []
        for pid, doc in changed.items():
            partial = {k: v for k, v in doc.items() if k not in OWNED_ELSEWHERE}
            actions.append({"_op_type": "update", "_index": self.index, "_id": pid, "retry_on_conflict": 3,
                            "doc": partial, "upsert": {**partial, "purchase_count": doc.get("purchase_count", 0)}})
        # One request for the batch; documents rejected one by one come back as {id: "type: reason"}.
        _, errors = await async_bulk(self.es, actions, chunk_size=max(len(actions), 1), raise_on_error=False,
                                     refresh=False)
        return bulk_failures(errors)
