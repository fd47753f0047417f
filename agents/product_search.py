"""Product search documents (Elasticsearch, behind the `products` alias) from product-events.

State is the indexed document (it carries `last_seq`), read with one mget per batch and written with
one _bulk of partial updates, so `purchase_count` (kept by the sales projection) is never overwritten.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from elasticsearch import AsyncElasticsearch, BadRequestError, NotFoundError

from app.read_models import PRODUCTS_ALIAS, PRODUCTS_MAPPING
from domain.views import apply_product_event

OWNED_ELSEWHERE = ("purchase_count",)


async def ensure_products_index(es: AsyncElasticsearch, alias: str = PRODUCTS_ALIAS) -> str:
    """Create `<alias>-v1` with the explicit mapping and point the alias at it, unless the alias exists.
    Safe to run from several workers at once (the product and sales workers start together)."""
    if await es.indices.exists_alias(name=alias):
        return alias
    index = f"{alias}-v1"
    try:
        await es.indices.create(index=index, mappings=PRODUCTS_MAPPING,
                                settings={"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "1s"})
    except BadRequestError as exc:
        if exc.error != "resource_already_exists_exception":
            raise
    await es.indices.put_alias(index=index, name=alias)
    return alias


class ProductSearch:
    name = "product-search"
    sinks = "elasticsearch"

    def __init__(self, es: AsyncElasticsearch, alias: str = PRODUCTS_ALIAS) -> None:
        self.es = es
        self.alias = alias

    async def load(self, aggregate_ids: list[str]) -> dict[str, Any]:
        try:
            resp = await self.es.mget(index=self.alias, ids=aggregate_ids)
        except NotFoundError:
            return {}
        return {d["_id"]: d["_source"] for d in resp["docs"] if d.get("found")}

    def last_seq(self, state: Any) -> int:
        return (state or {}).get("last_seq", 0)

    async def references(self, events: list[Mapping[str, Any]]) -> None:
        return None

    def apply(self, state: Any, event: Mapping[str, Any], refs: Any) -> Any:
        return apply_product_event(state, event)

    async def write(self, changed: dict[str, Any]) -> dict[str, str]:
        operations: list[dict] = []
        for pid, doc in changed.items():
            partial = {k: v for k, v in doc.items() if k not in OWNED_ELSEWHERE}
            operations.append({"update": {"_index": self.alias, "_id": pid, "retry_on_conflict": 3}})
            operations.append({"doc": partial, "upsert": {**doc, "purchase_count": doc.get("purchase_count", 0)}})
        resp = await self.es.bulk(operations=operations, refresh=False)
        failures = {}
        if resp.get("errors"):
            for item in resp["items"]:
                result = item["update"]
                if result.get("error"):
                    failures[result["_id"]] = f"{result['error'].get('type')}: {result['error'].get('reason')}"
        return failures
