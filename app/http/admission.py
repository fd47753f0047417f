"""Admission control as ASGI middleware: past its capacity a process sheds API requests, it does not queue them.

Why: without a bound, every request past capacity waits in the event loop's queue; latency grows for
everyone, clients time out on work that still runs, and nothing tells them "busy". With it, a process
works on at most MAX_IN_FLIGHT requests under `/api/` at once; one more waits at most ADMISSION_WAIT_MS
for a slot and is otherwise answered at once `503 {"code": "overloaded", ...}` with `Retry-After: 1`.

Guarantees:
- A shed request is decided before the app sees it: it reaches no authentication, rate limit, handler or
  store, and reads no body. A shed command therefore did nothing, and retrying it is safe; an admitted
  one is never cut short by this middleware (it keeps its slot until its answer is sent).
- A shed request is answered within ADMISSION_WAIT_MS plus the time to write the answer: the wait is a
  timer, not a poll, and a slot freed during it goes to the longest-waiting request (first come, first
  served; a newcomer never takes a slot from one that waits).
- Only paths under `/api/` are admitted or shed. Probes (`/healthz`, `/readyz`), `/metrics`, `/docs`,
  `/openapi.json` and `/dashboard` are always answered, so an overloaded process is neither restarted
  nor taken for dead, and its metrics still show the overload.
- Shed requests count in `http_requests_shed_total{service}`; admitted ones in flight in
  `http_requests_in_flight{service}`.

Defaults (app/settings.py): a command costs the gateway ~4 ms of CPU, and one process runs one event
loop, so about 250 commands/s per process (a 2-core machine runs two processes at most). 64 in flight
keep the CPU busy while most of them wait on PostgreSQL, and bound the queueing an admitted request can
meet to ~64 x 4 ms = 0.25 s. At capacity a slot frees every ~4 ms, so a 20 ms wait absorbs a short burst
(a handful of slots turn over) and a shed request is still answered well within 50 ms.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque

from prometheus_client import Counter, Gauge
from starlette.types import ASGIApp, Receive, Scope, Send

from app.http.errors import error_body

RETRY_AFTER_S = 1
ADMITTED_PREFIX = "/api/"

SHED = Counter("http_requests_shed_total", "API requests answered 503 overloaded without being handled",
               ["service"])
IN_FLIGHT = Gauge("http_requests_in_flight", "API requests being handled (admitted, not yet answered)",
                  ["service"])


class Slots:
    """A counting semaphore whose wait is bounded and whose slots pass first come, first served.

    Not asyncio.Semaphore under wait_for: there a timeout cancels the waiter, and whether a slot released
    at that moment is passed on, and whether a newcomer may overtake the waiters, has changed between Python
    releases. Here the timer and a release both resolve the waiter's future, only the first counts, and a
    release hands its slot straight to the oldest waiter; nothing binds an instance to one event loop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0
        self.waiters: deque[asyncio.Future[bool]] = deque()

    async def acquire(self, wait_s: float) -> bool:
        """True with a slot taken (release it); False when none freed within `wait_s`."""
        if self.taken < self.limit:  # then nobody waits: a release hands its slot on rather than free it
            self.taken += 1
            return True
        if wait_s <= 0:
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self.waiters.append(waiter)
        timer = loop.call_later(wait_s, _resolve, waiter, False)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.release()  # handed a slot just as the request was cancelled: give it on
            raise
        finally:
            timer.cancel()
            with contextlib.suppress(ValueError):
                self.waiters.remove(waiter)

    def release(self) -> None:
        """Hand the slot to the longest waiter still waiting, else return it."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        self.taken -= 1


def _resolve(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)


def route_path(scope: Scope) -> str:
    """The path the app routes on: without the root path a proxy may mount the service under."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def admitted_path(path: str) -> bool:
    """Whether a request to `path` takes a slot (and may be shed)."""
    return path.startswith(ADMITTED_PREFIX) or path == ADMITTED_PREFIX.rstrip("/")


class Admission:
    """Bound the `/api/` requests a process handles at once; answer the rest 503 overloaded, fast."""

    def __init__(self, app: ASGIApp, *, max_in_flight: int, wait_ms: int, service: str) -> None:
        self.app = app
        self.slots = Slots(max_in_flight)
        self.wait_s = wait_ms / 1000
        self.service = service
        self.shed = SHED.labels(service=service)
        self.in_flight = IN_FLIGHT.labels(service=service)
        body = error_body("overloaded", f"busy: {max_in_flight} requests in flight, the most this process takes; "
                                        f"retry after {RETRY_AFTER_S} s")
        self.refusal = json.dumps(body).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not admitted_path(route_path(scope)):
            await self.app(scope, receive, send)
            return
        if not await self.slots.acquire(self.wait_s):
            self.shed.inc()
            await self._refuse(send)
            return
        self.in_flight.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight.dec()
            self.slots.release()

    async def _refuse(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(self.refusal)).encode()),
                                (b"retry-after", str(RETRY_AFTER_S).encode())]})
        await send({"type": "http.response.body", "body": self.refusal})
