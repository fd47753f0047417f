"""Overload shedding (app/http/admission.py), driven through real HTTP clients: past MAX_IN_FLIGHT a request
is answered 503 overloaded with Retry-After within the admission wait, never reaches the app, and probes
are still answered."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI, Request
from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from pydantic import ValidationError

from app.http.admission import Admission, Slots, admitted_path
from app.http.limits import BodySizeLimit
from app.http.metrics import RouteLatency
from app.http.service import service_app
from app.settings import Settings

SECRET = "s" * 32
SLACK_S = 0.25  # scheduling on a busy 2-core machine; the bound itself is what the assertions name
PROBES = ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/dashboard")
_services = iter(range(1_000_000))


def new_service() -> str:
    """A service label of its own per test, so the process-wide counters do not mix tests."""
    return f"test_{next(_services)}"


def shed_count(service: str) -> float:
    return REGISTRY.get_sample_value("http_requests_shed_total", {"service": service}) or 0.0


def in_flight(service: str) -> float:
    return REGISTRY.get_sample_value("http_requests_in_flight", {"service": service}) or 0.0


class Held:
    """A tiny app whose `/api/hold/{key}` handler blocks until `release(key)`; it counts what ran."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.handled = 0  # handler calls
        self.authenticated = 0  # calls of the route dependency standing in for authentication
        self.app = FastAPI()

        async def authenticate() -> None:
            self.authenticated += 1

        @self.app.post("/api/hold/{key}", dependencies=[Depends(authenticate)])
        async def hold(key: str, request: Request) -> dict:
            self.handled += 1
            await request.body()
            await self.gate(key).wait()
            return {"key": key}

        @self.app.get("/api/boom")
        async def boom() -> dict:
            raise RuntimeError("a handler that fails")

        for path in ("/healthz", "/readyz", "/metrics", "/dashboard"):
            self.app.add_api_route(path, self.probe, methods=["GET"])

    async def probe(self) -> dict:
        return {"status": "ok"}

    def gate(self, key: str) -> asyncio.Event:
        return self.gates.setdefault(key, asyncio.Event())

    def release(self, key: str) -> None:
        self.gate(key).set()

    async def until_handling(self, n: int, timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        while self.handled < n:
            assert time.monotonic() < end, f"{self.handled} requests reached the handler, expected {n}"
            await asyncio.sleep(0.005)


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), 30))


@contextlib.asynccontextmanager
async def asgi_client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                 base_url="http://test", timeout=10) as client:
        yield client


@contextlib.asynccontextmanager
async def served(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """`app` served by uvicorn on a random loopback port, and an HTTP client of it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "uvicorn stopped before it started"
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        await task
        sock.close()


def admitted(held: Held, max_in_flight: int, wait_ms: int, service: str) -> Admission:
    return Admission(held.app, max_in_flight=max_in_flight, wait_ms=wait_ms, service=service)


def assert_overloaded(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["code"] == "overloaded" and isinstance(body["message"], str) and body["message"], body
    assert set(body) <= {"code", "message", "field"}, body
    assert r.headers["content-type"] == "application/json"
    assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1, r.headers


# ---- through an HTTP client, around a tiny app ------------------------------------------------------

@pytest.mark.parametrize("wait_ms", [0, 20, 100])
def test_past_max_in_flight_a_request_is_shed_within_the_wait_and_probes_still_answer(wait_ms: int):
    held, service, n = Held(), new_service(), 3

    async def scenario() -> None:
        async with asgi_client(admitted(held, n, wait_ms, service)) as client:
            running = [asyncio.create_task(client.post(f"/api/hold/{i}", content=b"{}")) for i in range(n)]
            await held.until_handling(n)
            assert in_flight(service) == n

            t0 = time.perf_counter()
            r = await client.post("/api/hold/extra", content=b"{}")
            elapsed = time.perf_counter() - t0
            assert_overloaded(r)
            assert elapsed < wait_ms / 1000 + SLACK_S, elapsed
            assert elapsed >= wait_ms / 1000 * 0.9, f"shed after {elapsed:.3f}s without waiting {wait_ms} ms"
            assert shed_count(service) == 1
            assert (held.handled, held.authenticated) == (n, n), "the shed request reached the app"

            for path in PROBES:  # the slots are still all taken
                assert (await client.get(path)).status_code == 200, path
            assert shed_count(service) == 1

            for i in range(n):
                held.release(str(i))
            assert [r.status_code for r in await asyncio.gather(*running)] == [200] * n
            assert in_flight(service) == 0

            held.release("after")
            r = await client.post("/api/hold/after", content=b"{}")
            assert r.status_code == 200 and r.json() == {"key": "after"}
            assert shed_count(service) == 1

    run(scenario)


def test_a_request_that_waits_less_than_the_bound_for_a_freed_slot_is_admitted():
    held, service = Held(), new_service()

    async def scenario() -> None:
        async with asgi_client(admitted(held, 1, 1000, service)) as client:
            first = asyncio.create_task(client.post("/api/hold/first", content=b"{}"))
            await held.until_handling(1)
            held.release("second")
            t0 = time.perf_counter()
            second = asyncio.create_task(client.post("/api/hold/second", content=b"{}"))
            await asyncio.sleep(0.1)
            assert held.handled == 1 and not second.done(), "the second request did not wait for the slot"
            held.release("first")
            r = await second
            assert r.status_code == 200, r.text
            assert time.perf_counter() - t0 < 1.0
            assert (await first).status_code == 200
            assert shed_count(service) == 0 and in_flight(service) == 0

    run(scenario)


def test_a_shed_request_never_reaches_the_app():
    """Neither its route's dependencies (authentication, rate limit) nor its handler run, nor is its body read:
    a shed command did nothing."""
    held, service = Held(), new_service()
    received: list[str] = []

    async def scenario() -> None:
        admission = admitted(held, 1, 0, service)

        async def spy(scope, receive, send) -> None:
            async def watched():
                message = await receive()
                received.append(scope["path"])
                return message
            await admission(scope, watched, send)

        async with asgi_client(spy) as client:
            first = asyncio.create_task(client.post("/api/hold/first", content=b'{"n": 1}'))
            await held.until_handling(1)
            received.clear()
            shed = await asyncio.gather(*[client.post(f"/api/hold/s{i}", content=b'{"n": 2}') for i in range(5)])
            for r in shed:
                assert_overloaded(r)
            assert (held.handled, held.authenticated) == (1, 1)
            assert received == [], "a shed request's body was read"
            assert shed_count(service) == 5
            held.release("first")
            assert (await first).status_code == 200

    run(scenario)


def test_a_failing_handler_gives_its_slot_back():
    held, service = Held(), new_service()

    async def scenario() -> None:
        async with asgi_client(admitted(held, 1, 0, service)) as client:
            for _ in range(3):
                assert (await client.get("/api/boom")).status_code == 500
            assert in_flight(service) == 0
            held.release("next")
            assert (await client.post("/api/hold/next", content=b"{}")).status_code == 200
            assert shed_count(service) == 0

    run(scenario)


def test_over_real_http_the_shed_answer_and_the_probes():
    """The same through uvicorn on a loopback port: the status, body and Retry-After reach a real client."""
    held, service = Held(), new_service()

    async def scenario() -> None:
        async with served(admitted(held, 2, 20, service)) as client:
            running = [asyncio.create_task(client.post(f"/api/hold/{i}", json={"i": i})) for i in range(2)]
            await held.until_handling(2)
            t0 = time.perf_counter()
            r = await client.post("/api/hold/extra", json={"i": 9})
            elapsed = time.perf_counter() - t0
            assert_overloaded(r)
            assert elapsed < 0.02 + SLACK_S, elapsed
            for path in PROBES:
                assert (await client.get(path)).status_code == 200, path
            held.release("0")
            held.release("1")
            assert [r.status_code for r in await asyncio.gather(*running)] == [200, 200]
            held.release("later")
            assert (await client.post("/api/hold/later", json={})).status_code == 200
            assert held.handled == 3 and shed_count(service) == 1

    run(scenario)


def test_a_slow_upload_is_admitted_before_its_body_arrives_and_holds_its_slot_until_it_ends():
    """What tests/e2e/test_overload.py relies on to hold a gateway's slots; and why a proxy that buffers
    bodies belongs in front of the services (slow clients occupy slots as long as they take)."""
    held, service = Held(), new_service()

    async def scenario() -> None:
        async with served(admitted(held, 1, 0, service)) as client:
            port = int(str(client.base_url).rsplit(":", 1)[1].rstrip("/"))
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /api/hold/slow HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 2\r\n\r\n{")
            await writer.drain()
            await held.until_handling(1)
            assert_overloaded(await client.post("/api/hold/other", json={}))
            held.release("slow")
            writer.write(b"}")
            await writer.drain()
            assert (await reader.readline()).startswith(b"HTTP/1.1 200"), "the slow upload was not handled"
            writer.close()
            held.release("other")
            assert (await client.post("/api/hold/other", json={})).status_code == 200
            assert held.handled == 2 and shed_count(service) == 1

    run(scenario)


# ---- the shared frame -------------------------------------------------------------------------------

def framed_app(**settings: Any) -> tuple[FastAPI, Held, str]:
    """service_app (not started: no Redis is needed while no route asks for the rate limiter) with a
    blocking route under /api/."""
    held, service = Held(), new_service()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield

    latency = Histogram("test_admission_seconds", "unused", [service, "outcome"], registry=CollectorRegistry())
    app = service_app(title="t", description="t", lifespan=lifespan, latency=latency, label=service,
                      settings=Settings(auth_jwt_secret=SECRET, metrics_public=True, **settings))

    async def authenticate() -> None:
        held.authenticated += 1

    @app.post("/api/hold/{key}", dependencies=[Depends(authenticate)])
    async def hold(key: str) -> dict:
        held.handled += 1
        await held.gate(key).wait()
        return {"key": key}

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"status": "ready"}
    return app, held, service


def test_both_services_frame_sheds_outside_routing_and_keeps_the_body_limit_outermost():
    app, _, _ = framed_app()
    assert [m.cls for m in app.user_middleware] == [BodySizeLimit, RouteLatency, Admission]  # outermost first


def test_the_frame_sheds_before_dependencies_answers_413_without_a_slot_and_serves_probes():
    app, held, service = framed_app(max_in_flight=1, admission_wait_ms=0, max_body_bytes=1024)

    async def scenario() -> None:
        async with asgi_client(app) as client:
            first = asyncio.create_task(client.post("/api/hold/first"))
            await held.until_handling(1)
            assert_overloaded(await client.post("/api/hold/second"))
            assert (held.handled, held.authenticated) == (1, 1)
            too_large = await client.post("/api/hold/big", content=b"x" * 2048)
            assert too_large.status_code == 413 and too_large.json()["code"] == "payload_too_large"
            for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
                assert (await client.get(path)).status_code == 200, path
            assert shed_count(service) == 1
            held.release("first")
            assert (await first).status_code == 200

    run(scenario)


@pytest.mark.parametrize("module", ["app.commands.api", "app.queries.api"])
def test_every_api_operation_declares_503_with_the_error_schema_and_retry_after(module: str):
    create_app = __import__(module, fromlist=["create_app"]).create_app
    spec = create_app(Settings(auth_jwt_secret=SECRET)).openapi()
    operations = [(path, method, op) for path, item in spec["paths"].items() if path.startswith("/api/")
                  for method, op in item.items()]
    assert operations
    for path, method, op in operations:
        declared = op["responses"].get("503")
        assert declared, f"{method.upper()} {path} does not declare 503"
        assert "overloaded" in declared["description"], (path, declared["description"])
        assert declared["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1] in ("ErrorBody", "Error")
        assert declared["headers"]["Retry-After"]["schema"] == {"type": "integer"}


# ---- the pieces ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "shed"), [("/api/orders", True), ("/api", True), ("/api/ops/pipeline", True),
                                            ("/healthz", False), ("/readyz", False), ("/metrics", False),
                                            ("/docs", False), ("/openapi.json", False), ("/dashboard", False),
                                            ("/apis", False)])
def test_only_api_paths_are_admitted_or_shed(path: str, shed: bool):
    assert admitted_path(path) is shed


def test_a_freed_slot_goes_to_the_longest_waiter_not_a_newcomer():
    async def scenario() -> list[str]:
        slots, order = Slots(1), []
        assert await slots.acquire(0)

        async def take(name: str) -> None:
            assert await slots.acquire(1.0)
            order.append(name)
            await asyncio.sleep(0.01)
            slots.release()

        waiting = [asyncio.create_task(take(n)) for n in ("a", "b", "c")]
        await asyncio.sleep(0.01)
        slots.release()
        await asyncio.gather(*waiting)
        assert slots.taken == 0 and not slots.waiters
        return order

    assert run(scenario) == ["a", "b", "c"]


def test_a_waiter_that_times_out_or_is_cancelled_leaks_no_slot():
    async def scenario() -> None:
        slots = Slots(1)
        assert await slots.acquire(0)
        assert not await slots.acquire(0.01)  # timed out
        cancelled = asyncio.create_task(slots.acquire(1.0))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        handed = asyncio.create_task(slots.acquire(1.0))
        await asyncio.sleep(0.01)
        slots.release()  # hands the slot to `handed`...
        handed.cancel()  # ...which is cancelled before it runs again: the slot must come back
        with pytest.raises(asyncio.CancelledError):
            await handed
        assert slots.taken == 0 and not slots.waiters
        assert await slots.acquire(0) and slots.taken == 1

    run(scenario)


def test_settings_defaults_and_bounds():
    s = Settings(auth_jwt_secret=SECRET)
    assert (s.max_in_flight, s.admission_wait_ms) == (64, 20)
    for bad in ({"max_in_flight": 0}, {"max_in_flight": 100_001}, {"admission_wait_ms": -1},
                {"admission_wait_ms": 1001}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            Settings(auth_jwt_secret=SECRET, **bad)


def test_settings_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("MAX_IN_FLIGHT", "2")
    monkeypatch.setenv("ADMISSION_WAIT_MS", "0")
    s = Settings(auth_jwt_secret=SECRET)
    assert (s.max_in_flight, s.admission_wait_ms) == (2, 0)
