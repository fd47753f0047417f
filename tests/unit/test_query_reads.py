"""Shaping of query answers from read-model documents (no services)."""
from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from app.queries import reads


@pytest.mark.parametrize("value, expected", [
    (datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=timezone.utc), "2024-05-01T10:00:00.123Z"),
    (datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))), "2024-05-01T10:00:00.000Z"),
    (datetime(2024, 5, 1, 10, 0), "2024-05-01T10:00:00.000Z"),  # naive values are UTC
    ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00.000Z"),
    ("2024-05-01T12:00:00+02:00", "2024-05-01T10:00:00.000Z"),
    (None, None),
])
def test_datetimes_are_iso_utc_with_z(value, expected) -> None:
    assert reads.iso_utc(value) == expected


@pytest.mark.parametrize("value, expected", [("79.99", "79.99"), ("5", "5.00"), (Decimal("1.5"), "1.50"),
                                             (None, None)])
def test_money_stays_a_two_decimal_string(value, expected) -> None:
    assert reads.money(value) == expected


def test_history_is_newest_first_ties_by_order_id_with_mixed_date_types() -> None:
    day = datetime(2024, 5, 3, tzinfo=timezone.utc)
    doc = [{"order_id": "b", "date": day}, {"order_id": "a", "date": "2024-05-03T00:00:00Z"},
           {"order_id": "c", "date": day + timedelta(seconds=1)}, {"order_id": "d"}]
    page = reads.history_page("c1", doc, 1, 10)
    assert [o["order_id"] for o in page["orders"]] == ["c", "a", "b", "d"]
    assert page["total"] == 4
    assert reads.history_page("c1", doc, 2, 3)["orders"][0]["order_id"] == "d"
    assert reads.history_page("c1", None, 1, 20) == {"customer_id": "c1", "orders": [], "page": 1, "size": 20,
                                                     "total": 0}


def test_search_text_is_only_a_match_query_value() -> None:
    q = '{"query_string": {"query": "*"}}'
    body = reads.search_request(q=q, category='{"match_all": {}}', min_price=Decimal("1"), max_price=None,
                                in_stock=True, sort="price_asc", page=3, size=20)
    assert (body["from"], body["size"], body["sort"][0]) == (40, 20, {"price": "asc"})
    assert {"term": {"category": '{"match_all": {}}'}} in body["query"]["bool"]["filter"]
    assert {"range": {"price": {"gte": 1.0}}} in body["query"]["bool"]["filter"]

    def places(node, path=()):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from places(v, (*path, k))
        elif isinstance(node, list):
            for v in node:
                yield from places(v, path)
        elif node == q:
            yield path

    assert {p[-2:] for p in places(body)} == {("multi_match", "query")}
    assert "query_string" not in json.dumps(body).replace(json.dumps(q)[1:-1], "")


def test_sales_day_lists_all_24_hours() -> None:
    body = reads.sales_body(date(2024, 5, 1), {"orders": "3", "revenue_cents": "1005", "hour:07:orders": "3",
                                               "hour:07:revenue_cents": "1005"})
    assert (body["day"], body["orders"], body["revenue"]) == ("2024-05-01", 3, "10.05")
    assert len(body["hours"]) == 24 and body["hours"][7] == {"hour": "07", "orders": 3, "revenue": "10.05"}
    assert body["hours"][0] == {"hour": "00", "orders": 0, "revenue": "0.00"}


def _fuzzy_clauses(body: dict) -> list[dict]:
    return [c for c in json.loads(json.dumps(body))["query"]["bool"].get("must", [{}])[0].get("bool", {})
            .get("should", []) if "fuzziness" in c.get("multi_match", {})]


def test_search_allows_typos_only_when_asked() -> None:
    plain = reads.search_request(q="desk lamp", category=None, min_price=None, max_price=None, in_stock=None,
                                 sort="relevance", page=1, size=20)
    tolerant = reads.search_request(q="desk lamp", category=None, min_price=None, max_price=None, in_stock=None,
                                    sort="relevance", page=1, size=20, typos=True)
    assert _fuzzy_clauses(plain) == []
    assert [c["multi_match"]["fuzziness"] for c in _fuzzy_clauses(tolerant)] == ["AUTO"]
    assert plain["query"]["bool"]["should"] == tolerant["query"]["bool"]["should"]  # the phrase boost stays


@pytest.mark.parametrize("q, total, again", [
    ("lmap", {"value": 0, "relation": "eq"}, True),
    ("lamp", {"value": 3, "relation": "eq"}, False),
    ("lamp", 0, True),                       # a total as a plain number (rest_total_hits_as_int)
    (None, {"value": 0, "relation": "eq"}, False),  # no words: nothing a typo could explain
    ("", {"value": 0, "relation": "eq"}, False),
])
def test_a_search_is_asked_again_with_typos_only_when_its_words_found_nothing(q, total, again) -> None:
    # a page past the last result has no hits but a total: it is not "nothing found"
    assert reads.retry_with_typos(q, {"hits": {"total": total, "hits": []}}) is again
