"""What the query API answers, built from read-model documents: shaping, sorting, paging, and the
Elasticsearch request for a product search. No I/O.

User input only ever becomes a literal value: ids are looked up by `_id` equality, the search text is
the `query` of a multi_match, filters are term/range values, sort keys come from a fixed table."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

SEARCH_FIELDS = ["name^3", "tags^2", "description"]
MAX_RESULT_WINDOW = 10_000  # Elasticsearch's index.max_result_window: from + size may not exceed it
SEARCH_SOURCE = ["product_id", "name", "category", "price", "price_text", "rating", "in_stock", "image_url",
                 "purchase_count"]
_BY_ID = {"product_id": "asc"}
SORTS: dict[str, list[dict[str, Any]]] = {
    "relevance": [{"_score": "desc"}, _BY_ID],
    "price_asc": [{"price": "asc"}, _BY_ID],
    "price_desc": [{"price": "desc"}, _BY_ID],
    "rating": [{"rating": "desc"}, {"review_count": "desc"}, _BY_ID],
    "newest": [{"created_at": "desc"}, _BY_ID],
    "popular": [{"purchase_count": "desc"}, {"_score": "desc"}, _BY_ID],
}
_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


# ---- values ---------------------------------------------------------------------------------------

def iso_utc(value: Any) -> str | None:
    """A datetime (or ISO-8601 text) as ISO-8601 UTC with milliseconds and a Z, e.g. 2024-05-01T10:00:00.000Z."""
    parsed = as_datetime(value)
    if parsed is None:
        return value if value is None else str(value)
    return parsed.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, str):
        try:
            return as_datetime(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def money(value: Any) -> str | None:
    """An amount as a string with two decimals (read models store strings; Decimal/Decimal128 tolerated)."""
    if value is None:
        return None
    try:
        return f"{Decimal(str(value)):.2f}"
    except InvalidOperation:
        return str(value)


def cents_to_money(cents: Any) -> str:
    return f"{Decimal(int(cents or 0)).scaleb(-2):.2f}"


# ---- orders ---------------------------------------------------------------------------------------

def order_body(doc: Mapping[str, Any], last_seq: Any = None) -> dict[str, Any]:
    """An order view (from `order_views`, or the write model's snapshot) in the API's shape."""
    return {
        "order_id": doc["order_id"],
        "customer_id": doc.get("customer_id"),
        "customer_name": doc.get("customer_name"),
        "customer_email": doc.get("customer_email"),
        "items": [{"product_id": i.get("product_id"), "product_name": i.get("product_name"),
                   "product_image": i.get("product_image"), "quantity": i.get("quantity"),
                   "unit_price": money(i.get("unit_price"))} for i in doc.get("items") or []],
        "total": money(doc.get("total")),
        "status": doc.get("status"),
        "tracking_number": doc.get("tracking_number"),
        "created_at": iso_utc(doc.get("created_at")),
        "updated_at": iso_utc(doc.get("updated_at")),
        "last_seq": doc.get("last_seq", last_seq),
    }


def snapshot_body(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The write model's order (write_model.order_snapshot) with the view's field names; version = last sequence."""
    return order_body(snapshot, last_seq=snapshot.get("version"))


# ---- customer order history -----------------------------------------------------------------------

def history_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "order_id": entry.get("order_id"),
        "date": iso_utc(entry.get("date")),
        "total": money(entry.get("total")),
        "status": entry.get("status"),
        "products": [{"product_id": p.get("product_id"), "name": p.get("name"), "price": money(p.get("price")),
                      "image_url": p.get("image_url"), "quantity": p.get("quantity")}
                     for p in entry.get("products") or []],
        "last_seq": entry.get("last_seq"),
    }


def history_page(customer_id: str, entries: Iterable[Mapping[str, Any]] | None, page: int,
                 size: int) -> dict[str, Any]:
    """One page of a customer's orders, newest first (date descending, then order id ascending)."""
    entries = list(entries or ())
    entries.sort(key=lambda e: str(e.get("order_id") or ""))
    entries.sort(key=lambda e: as_datetime(e.get("date")) or _EPOCH, reverse=True)
    start = (page - 1) * size
    return {"customer_id": customer_id, "orders": [history_entry(e) for e in entries[start:start + size]],
            "page": page, "size": size, "total": len(entries)}


# ---- product search -------------------------------------------------------------------------------

def search_request(*, q: str | None, category: str | None, min_price: Decimal | None, max_price: Decimal | None,
                   in_stock: bool | None, sort: str, page: int, size: int, typos: bool = False) -> dict[str, Any]:
    """The search body. The text matches when every word is found in name, tags or description
    (cross-field; from three words on, 75% of them); an exact phrase in a field ranks higher. With `typos`,
    a product also matches when every word is found, allowing typos, in one field: the query API asks for
    that only when the words as typed found nothing, because building the typo automata was most of the
    search index's CPU (3x the cost of a search without them, measured on the shop's queries)."""
    filters: list[dict[str, Any]] = []
    if category:
        filters.append({"term": {"category": category}})
    if min_price is not None or max_price is not None:
        bounds = {k: float(v) for k, v in (("gte", min_price), ("lte", max_price)) if v is not None}
        filters.append({"range": {"price": bounds}})
    if in_stock is not None:
        filters.append({"term": {"in_stock": in_stock}})
    query: dict[str, Any] = {"bool": {"filter": filters}}
    if q:
        words: list[dict[str, Any]] = [
            {"multi_match": {"query": q, "fields": SEARCH_FIELDS, "type": "cross_fields", "operator": "or",
                             "minimum_should_match": "2<75%"}}]
        if typos:
            words.append({"multi_match": {"query": q, "fields": SEARCH_FIELDS, "type": "best_fields",
                                          "operator": "and", "fuzziness": "AUTO", "prefix_length": 1,
                                          "boost": 0.5}})
        query["bool"]["must"] = [{"bool": {"minimum_should_match": 1, "should": words}}]
        query["bool"]["should"] = [{"multi_match": {"query": q, "fields": SEARCH_FIELDS, "type": "phrase",
                                                    "boost": 2}}]
    return {"query": query, "sort": SORTS[sort], "from": (page - 1) * size, "size": size,
            "track_total_hits": True, "_source": SEARCH_SOURCE}


def retry_with_typos(q: str | None, response: Mapping[str, Any]) -> bool:
    """Whether a search for the words as typed should be asked again allowing typos: it had words and no
    product matched them (a page past the last result is not "nothing": its total is not 0)."""
    return bool(q) and search_total(response) == 0


def search_total(response: Mapping[str, Any]) -> int:
    total = (response.get("hits") or {}).get("total") or {}
    return total.get("value", 0) if isinstance(total, Mapping) else int(total)


def search_hit(source: Mapping[str, Any]) -> dict[str, Any]:
    price = source.get("price")
    return {"product_id": source.get("product_id"), "name": source.get("name"), "category": source.get("category"),
            "price": price, "price_text": source.get("price_text") or money(price), "rating": source.get("rating"),
            "in_stock": source.get("in_stock"), "image_url": source.get("image_url"),
            "purchase_count": source.get("purchase_count", 0)}


def search_body(response: Mapping[str, Any], page: int, size: int) -> dict[str, Any]:
    hits = response.get("hits") or {}
    return {"results": [search_hit(h.get("_source") or {}) for h in hits.get("hits") or []],
            "total": search_total(response),
            "took_ms": response.get("took", 0), "page": page, "size": size}


def empty_search(page: int, size: int, took_ms: int = 0) -> dict[str, Any]:
    return {"results": [], "total": 0, "took_ms": took_ms, "page": page, "size": size}


# ---- sales dashboard ------------------------------------------------------------------------------

def sales_body(day: date, counters: Mapping[str, str]) -> dict[str, Any]:
    """A day's sales hash ({orders, revenue_cents, hour:HH:orders, hour:HH:revenue_cents}) with all 24 hours."""
    hours = []
    for h in range(24):
        hh = f"{h:02d}"
        hours.append({"hour": hh, "orders": int(counters.get(f"hour:{hh}:orders") or 0),
                      "revenue": cents_to_money(counters.get(f"hour:{hh}:revenue_cents"))})
    return {"day": day.isoformat(), "orders": int(counters.get("orders") or 0),
            "revenue": cents_to_money(counters.get("revenue_cents")), "hours": hours}
