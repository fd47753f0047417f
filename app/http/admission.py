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
  `http_requests_in_flight{service}`; the number taken at once now in `http_admission_limit{service}`.

How many at once adapts (LatencyLimit): MAX_IN_FLIGHT is the ceiling, and the number of slots follows
how long admitted requests take to be answered, additive increase while they are answered within
ADMISSION_TARGET_MS, multiplicative decrease (at most once per target interval) when they are not while
the process is short of CPU (app/http/cpu_pressure.py), never below ADMISSION_FLOOR. A fixed bound
cannot know the CPU the process will get: on a machine whose cores every server shares, 64 requests in
flight meant ~1.7 s for an admitted command under overload, 8 meant 0.44 s (bench-system). The time
counted is the process's own: from admission, or from the end of the request body if that came later (a
slow upload is the client's time), to the start of the answer; a read that asks to wait for its own
write (a consistency token or `min_version`) waits by request and is not counted.

Short of CPU means the event loop runs late while the process itself keeps ADMISSION_BUSY_CORES busy.
Slow answers while the loop keeps time wait on a store (down, or slow); slow answers in a process doing
little come from a machine busy with other work. Admitting fewer relieves neither, so neither lowers
the limit.

Defaults (app/settings.py): at most 64 in flight keep the CPU busy while most requests wait on a store,
and a 50 ms target bounds admitted commands' latency under twice the capacity (bench-system). A 20 ms
wait for a slot absorbs a short burst; ADMISSION_TARGET_MS 0 fixes the limit at MAX_IN_FLIGHT.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque

from prometheus_client import Counter, Gauge
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.errors import error_body
from app.http.cpu_pressure import CpuPressure
from domain.consistency import HEADER as CONSISTENCY_HEADER

RETRY_AFTER_S = 1
ADMITTED_PREFIX = "/api/"
DECREASE = 0.75
LATE_FRACTION = 0.5  # a loop late by half the target cannot answer within the target anyway
WAITS_BY_REQUEST = (CONSISTENCY_HEADER.lower().encode(), b"min_version=")

SHED = Counter("http_requests_shed_total", "API requests answered 503 overloaded without being handled",
               ["service"])
IN_FLIGHT = Gauge("http_requests_in_flight", "API requests being handled (admitted, not yet answered)",
                  ["service"])
LIMIT = Gauge("http_admission_limit", "API requests a process takes at once now (adapted to answer times)",
              ["service"])


class LatencyLimit:
    """How many requests to admit at once: AIMD on the time admitted requests take. Each answer within
    `target_s` adds 1/limit (about one slot per `limit` quick answers); a slower one takes the limit down
    by DECREASE, at most once per `target_s` so one burst of slow answers counts once, and only while the
    process is short of CPU (a queue here, or this process's work competing for shared cores). A slow
    answer with few requests in flight counts too (measured: keeping only the busy ones doubled the
    accepted commands' 99th percentile under overload)."""

    def __init__(self, ceiling: int, floor: int, target_s: float) -> None:
        self.ceiling, self.floor, self.target_s = ceiling, max(1, min(floor, ceiling)), target_s
        self.value = float(ceiling)
        self.calm_until = 0.0

    @property
    def current(self) -> int:
        return max(self.floor, int(self.value))

    def observe(self, took_s: float, now: float, *, short_of_cpu: bool) -> None:
        """Count one answer that took `took_s`; a slow one lowers the limit only while short of CPU."""
        if took_s <= self.target_s:
            self.value = min(float(self.ceiling), self.value + 1 / self.value)
        elif short_of_cpu and now >= self.calm_until:
            self.value = max(float(self.floor), self.value * DECREASE)
            self.calm_until = now + self.target_s


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
        """Hand the slot to the longest waiter still waiting, else return it (and return it anyway while more
        are taken than the limit now allows)."""
        while self.waiters and self.taken <= self.limit:
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


def waits_by_request(scope: Scope) -> bool:
    """A read that asks to wait for its own write: its answer may take up to its wait by design."""
    return WAITS_BY_REQUEST[1] in scope.get("query_string", b"") or any(
        name == WAITS_BY_REQUEST[0] for name, _ in scope.get("headers", ()))


def admitted_path(path: str) -> bool:
    """Whether a request to `path` takes a slot (and may be shed)."""
    return path.startswith(ADMITTED_PREFIX) or path == ADMITTED_PREFIX.rstrip("/")


class Admission:
    """Bound the `/api/` requests a process handles at once; answer the rest 503 overloaded, fast."""

    def __init__(self, app: ASGIApp, *, max_in_flight: int, wait_ms: int, service: str, target_ms: int = 0,
                 floor: int = 4, busy_cores: float = 0.0) -> None:
        self.app = app
        self.slots = Slots(max_in_flight)
        # target_ms 0: a fixed limit of max_in_flight (LatencyLimit never moves without samples)
        self.limit = LatencyLimit(max_in_flight, floor, target_ms / 1000)
        self.adapts = target_ms > 0
        self.pressure = CpuPressure(target_ms / 1000 * LATE_FRACTION, busy_cores, service)
        self.wait_s = wait_ms / 1000
        self.service = service
        self.shed = SHED.labels(service=service)
        self.in_flight = IN_FLIGHT.labels(service=service)
        self.limit_now = LIMIT.labels(service=service)
        self.limit_now.set(self.limit.current)
        body = error_body("overloaded", f"busy: as many requests in flight as this process takes now (at most "
                                        f"{max_in_flight}); retry after {RETRY_AFTER_S} s")
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
        if self.adapts:
            self.pressure.watch()
        own_time_from = time.monotonic()
        answered = 0.0

        async def receiving() -> Message:
            nonlocal own_time_from
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body"):
                own_time_from = max(own_time_from, time.monotonic())
            return message

        async def sending(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = time.monotonic()
            await send(message)

        try:
            await self.app(scope, receiving, sending)
        finally:
            self.in_flight.dec()
            if self.adapts and answered and not waits_by_request(scope):
                self.limit.observe(answered - own_time_from, answered,
                                   short_of_cpu=self.pressure.short_of_cpu(answered))
                self.slots.limit = self.limit.current
                self.limit_now.set(self.slots.limit)
            self.slots.release()

    async def _refuse(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(self.refusal)).encode()),
                                (b"retry-after", str(RETRY_AFTER_S).encode())]})
        await send({"type": "http.response.body", "body": self.refusal})
