"""Overload as a client meets it on real processes: past MAX_IN_FLIGHT a gateway answers 503 overloaded with
Retry-After at once, the shed command did nothing (sending it again succeeds), probes and /metrics are
still answered, and once the held requests end new ones are admitted. The query API sheds the same way.

A gateway's slots are held deterministically by slow uploads: a request whose headers arrived but whose
body has not is admitted (admission runs before the body is read) and keeps its slot until the body is
complete."""
from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx

from tests.e2e.conftest import Gateway, make_client, unique_email, wait_until

OVERLOAD = {"MAX_IN_FLIGHT": "2", "ADMISSION_WAIT_MS": "20", "OUTBOX_RELAY_ENABLED": "false"}
SHED_WITHIN_S = 0.5  # the shed answer's bound over real HTTP on a loaded machine (the wait itself is 20 ms)


def metric(client: httpx.Client, name: str, service: str) -> float:
    text = client.get("/metrics").text
    found = re.search(rf'^{name}{{service="{service}"}} ([0-9.e+-]+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def assert_overloaded(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "overloaded" and r.json()["message"], r.text
    assert int(r.headers["Retry-After"]) >= 1, r.headers


@contextmanager
def slow_uploads(url: str, token: str, count: int) -> Iterator[list[socket.socket]]:
    """`count` POST /api/customers whose body is sent only half; on exit the rest is sent and each answer
    read (422: the body `{}` is no customer), so every held request ends normally."""
    host, port = url.removeprefix("http://").split(":")
    held = []
    try:
        for _ in range(count):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(f"POST /api/customers HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{".encode())
            held.append(sock)
        yield held
        for sock in held:
            sock.sendall(b"}")
            assert sock.recv(4096).startswith(b"HTTP/1.1 422"), "a held request was not handled normally"
    finally:
        for sock in held:
            sock.close()


def test_past_max_in_flight_the_gateway_sheds_fast_and_the_shed_command_did_nothing(spawn_gateway, token):
    gateway: Gateway = spawn_gateway("overload", **OVERLOAD)
    gateway.wait_ready(leader=None)
    email = unique_email("overload")
    with make_client(gateway.url, token) as client:
        shed_before = metric(client, "http_requests_shed_total", "command")
        with slow_uploads(gateway.url, token, 2):
            wait_until("two requests in flight",
                       lambda: metric(client, "http_requests_in_flight", "command") == 2, timeout=10)
            t0 = time.perf_counter()
            r = client.post("/api/customers", json={"name": "Shed", "email": email})
            elapsed = time.perf_counter() - t0
            assert_overloaded(r)
            assert elapsed < SHED_WITHIN_S, elapsed
            assert_overloaded(client.patch(f"/api/products/{uuid.uuid4()}", json={"name": "x"}))
            for probe in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
                assert client.get(probe).status_code == 200, probe
            assert metric(client, "http_requests_shed_total", "command") == shed_before + 2
        wait_until("the held requests ended", lambda: metric(client, "http_requests_in_flight", "command") == 0,
                   timeout=10)
        again = client.post("/api/customers", json={"name": "Shed", "email": email})
        assert again.status_code == 201, f"the shed registration left a trace: {again.text}"


def test_past_max_in_flight_the_query_api_sheds_and_answers_its_probes(spawn_query_api, token):
    query = spawn_query_api("overload", MAX_IN_FLIGHT="1", ADMISSION_WAIT_MS="0")
    with make_client(query.base_url, token) as client:
        statuses: list[int] = []
        for _ in range(5):  # concurrent searches against one slot: bounded attempts until one is shed
            with ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(lambda i: client.get("/api/products/search", params={"q": f"x{i}"}),
                                        range(16)))
            statuses += [r.status_code for r in answers]
            for r in answers:
                if r.status_code == 503:
                    assert_overloaded(r)
            if 503 in statuses:
                break
        assert 503 in statuses and set(statuses) <= {200, 503}, statuses
        for probe in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/dashboard"):
            assert client.get(probe).status_code == 200, probe
        assert metric(client, "http_requests_shed_total", "query") >= 1
        assert client.get("/api/products/search", params={"q": "after"}).status_code == 200
