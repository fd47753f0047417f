"""Per-document results of Elasticsearch bulk writes (agents/search_bulk.py), as pure logic; the writes
themselves are tested against the real Elasticsearch by the end-to-end projection tests."""
from __future__ import annotations

from typing import Any

import pytest
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
from elasticsearch import ApiError

from agents.outages import outage_store
from agents.search_bulk import DocumentsUnavailable, bulk_failures


def item(doc_id: str, status: int, error_type: str | None = None, reason: str = "") -> dict:
    result: dict[str, Any] = {"_index": "products-v1", "_id": doc_id, "status": status}
    if error_type:
        result["error"] = {"type": error_type, "reason": reason}
    return {"update": result}


def meta(status: int) -> ApiResponseMeta:
    return ApiResponseMeta(status=status, http_version="1.1", headers=HttpHeaders(), duration=0.0,
                           node=NodeConfig("http", "127.0.0.1", 9200))


def test_rejected_documents_come_back_as_id_and_type_reason():
    errors = [item("p1", 400, "mapper_parsing_exception", "failed to parse field [price]"),
              item("p2", 404, "document_missing_exception", "[p2]: document missing")]
    assert bulk_failures(errors) == {"p1": "mapper_parsing_exception: failed to parse field [price]",
                                     "p2": "document_missing_exception: [p2]: document missing"}
    assert bulk_failures([]) == {}


def test_expected_statuses_are_left_to_the_caller():
    errors = [item("p1", 409, "version_conflict_engine_exception", "seq no conflict"),
              item("p2", 404, "document_missing_exception", "missing"),
              item("p3", 400, "illegal_argument_exception", "bad")]
    assert bulk_failures(errors, expected=(404, 409)) == {"p3": "illegal_argument_exception: bad"}


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_a_document_turned_away_as_not_now_is_an_outage_not_a_failure(status: int):
    errors = [item("p1", 400, "mapper_parsing_exception", "bad"),
              item("p2", status, "es_rejected_execution_exception", "rejected execution (queue capacity 200)")]
    with pytest.raises(DocumentsUnavailable) as raised:
        bulk_failures(errors)
    assert raised.value.status_code == status
    assert outage_store(raised.value) == "elasticsearch"
    assert "p2" in str(raised.value) and "es_rejected_execution_exception" in str(raised.value)


def test_an_outage_status_is_raised_even_when_expected_statuses_are_given():
    with pytest.raises(DocumentsUnavailable):
        bulk_failures([item("p1", 429, "es_rejected_execution_exception", "queue full")], expected=(404, 409))


def test_a_request_that_failed_as_a_whole_raises_its_own_error():
    """With raise_on_exception=False the helpers report a failed request as one error per document,
    carrying the exception: that is raised as it is (an outage stays an outage)."""
    exc = ApiError("service_unavailable", meta(503), {})
    errors = [{"update": {"_id": "p1", "status": 503, "error": str(exc), "exception": exc}}]
    with pytest.raises(ApiError) as raised:
        bulk_failures(errors)
    assert raised.value is exc
