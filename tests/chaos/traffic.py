"""Open-loop traffic: requests are due at times drawn in advance (Poisson arrivals at the configured rate,
from a seeded generator), and each is sent at its due time whatever earlier requests are doing — a slow
answer never slows the schedule, as with real users. In-flight requests are bounded: a request due while
the bound is reached is shed (counted), so a stalled gateway cannot pile up unbounded work. A request the
server sheds (`503 overloaded`, which it answers before doing anything) is sent again after its
Retry-After with jitter, as the README asks of clients, at most OVERLOADED_RETRIES times (counted).

Runs an asyncio loop in a background thread (httpx.AsyncClient); the counters are read after `stop`.
"""
from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from dataclasses import dataclass, field

import httpx

from tests.chaos.workload import Call, CommandMix

REQUEST_TIMEOUT_S = 10.0
KEEPALIVE_S = 1.0  # below the servers' 5 s keep-alive, so a pooled connection is never reused as it closes
LATE_S = 1.0  # a request sent this much after its due time counts as late (the sender fell behind)
OVERLOADED_RETRIES = 5
EXAMPLES = 5


REFUSALS = {409: None, 404: "item_not_found"}   # status -> error code (None: any) of a business refusal


def outcome(status: int | None, code: str | None = None) -> str:
    """The class of an answer: 2xx; refused (a business rule said no: any 409, or removing a line the order
    no longer has — the client's view of an order lags its concurrent commands); 4xx (any other client
    error: a harness bug); 5xx; or error (no answer at all)."""
    if status is None:
        return "error"
    if status < 300:
        return "2xx"
    if status in REFUSALS and REFUSALS[status] in (None, code):
        return "refused"
    return "4xx" if status < 500 else "5xx"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


@dataclass
class TrafficStats:
    """What the traffic sent and what came back."""

    commands: Counter = field(default_factory=Counter)      # outcome -> count
    by_command: Counter = field(default_factory=Counter)    # (command, outcome) -> count
    reads: Counter = field(default_factory=Counter)         # query-API reads: outcome -> count
    shed: int = 0
    overloaded_retries: int = 0                             # commands and reads sent again after a 503 overloaded
    late: int = 0
    max_delay_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)  # answered commands, send to answer
    failures: list[str] = field(default_factory=list)       # a few 5xx / no-answer examples

    @property
    def sent(self) -> int:
        return sum(self.commands.values())

    @property
    def failed(self) -> int:
        """Commands answered 5xx or not at all."""
        return self.commands["5xx"] + self.commands["error"]


@dataclass
class OpenLoopTraffic:
    """Sends commands to the gateway (and a share of reads to the query API) at `rate` per second."""

    gateway_url: str
    query_url: str
    token: str
    mix: CommandMix
    rate: float
    read_share: float = 0.15
    max_in_flight: int = 64
    seed: int = 1
    stats: TrafficStats = field(default_factory=TrafficStats)
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stopping: asyncio.Event | None = None
    _started: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="traffic", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the traffic loop did not start")

    def stop(self, timeout: float = REQUEST_TIMEOUT_S + 5) -> TrafficStats:
        """Stop sending; wait (bounded) for the answers of requests in flight."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)
        return self.stats

    async def _main(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        limits = httpx.Limits(max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight,
                              keepalive_expiry=KEEPALIVE_S)
        headers = {"Authorization": f"Bearer {self.token}"}
        schedule = random.Random(self.seed)   # arrival times only: fixed by the seed, independent of answers
        in_flight: set[asyncio.Task] = set()
        async with httpx.AsyncClient(base_url=self.gateway_url, headers=headers, timeout=REQUEST_TIMEOUT_S,
                                     limits=limits) as gateway, \
                httpx.AsyncClient(base_url=self.query_url, headers=headers, timeout=REQUEST_TIMEOUT_S,
                                  limits=limits) as query:
            self._started.set()
            due = self._loop.time()
            total_rate = self.rate * (1 + self.read_share)
            while not self._stopping.is_set():
                due += schedule.expovariate(total_rate)
                is_read = schedule.random() < self.read_share / (1 + self.read_share)
                wait = due - self._loop.time()
                if wait > 0:
                    try:
                        await asyncio.wait_for(self._stopping.wait(), wait)
                        break
                    except asyncio.TimeoutError:
                        pass
                delay = self._loop.time() - due
                self.stats.max_delay_s = max(self.stats.max_delay_s, delay)
                if delay > LATE_S:
                    self.stats.late += 1
                if len(in_flight) >= self.max_in_flight:
                    self.stats.shed += 1
                    continue
                call = self.mix.next_read() if is_read else self.mix.next_command()
                task = asyncio.create_task(self._send(query if is_read else gateway, call, is_read))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:
                await asyncio.wait(in_flight, timeout=REQUEST_TIMEOUT_S + 2)

    async def _send(self, client: httpx.AsyncClient, call: Call, is_read: bool) -> None:
        sent = asyncio.get_running_loop().time()
        for attempt in range(OVERLOADED_RETRIES + 1):
            code = None
            try:
                r = await client.request(call.method, call.path, json=call.body)
                status, text = r.status_code, r.text
                if 400 <= status < 500 or status == 503:
                    code = _error_code(r)
            except httpx.HTTPError as exc:
                status, text = None, f"{type(exc).__name__}: {exc}"
            if status != 503 or code != "overloaded" or attempt == OVERLOADED_RETRIES:
                break
            self.stats.overloaded_retries += 1
            await asyncio.sleep(float(r.headers.get("Retry-After", "1")) * (1 + random.random() / 2))
        kind = outcome(status, code)
        if is_read:
            self.stats.reads[kind] += 1
            return
        if status is not None:
            self.stats.latencies_s.append(asyncio.get_running_loop().time() - sent)
        self.stats.commands[kind] += 1
        self.stats.by_command[(call.name, kind)] += 1
        if kind == "2xx" and call.on_success is not None:
            call.on_success(r.json())
        elif kind in ("5xx", "error", "4xx") and len(self.stats.failures) < EXAMPLES:
            self.stats.failures.append(f"{call.method} {call.path} -> {status}: {text[:160]}")


def _error_code(r: httpx.Response) -> str | None:
    try:
        body = r.json()
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None
