"""A worker's probes over real HTTP: alive while it waits for a store, ready only with its tables
restored and every store answering."""
from __future__ import annotations

import httpx
import pytest

from agents.outages import StoreHealth
from agents.probes import serve_probes


@pytest.fixture
def probes():
    health = StoreHealth("order-views")
    server = serve_probes(health, 0)
    yield health, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_readiness_follows_tables_and_store_outages(probes):
    health, url = probes
    assert httpx.get(f"{url}/readyz").status_code == 503
    health.started = True
    assert httpx.get(f"{url}/readyz").json()["ready"] is True
    health.failed("mongodb", "write", ConnectionError("refused"))
    answer = httpx.get(f"{url}/readyz")
    assert answer.status_code == 503 and answer.json()["waiting_for"] == ["mongodb"]
    assert httpx.get(f"{url}/healthz").status_code == 200
    health.recovered({"mongodb"})
    assert httpx.get(f"{url}/readyz").status_code == 200


def test_metrics_are_served_beside_the_probes(probes):
    _, url = probes
    body = httpx.get(f"{url}/metrics").text
    assert "projection_events_total" in body and "projection_store_up" in body
