"""A lean HTTP/1.1 keep-alive load generator on asyncio streams, so the client costs little CPU on a
small machine and every request's latency is measured from first byte written to last byte read."""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0

    def percentile(self, p: float) -> float:
        data = sorted(self.latencies)
        if not data:
            return float("nan")
        return data[min(len(data) - 1, int(round(p / 100 * (len(data) - 1))))]

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if 200 <= s < 300)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    return status, body


# A benchmark's one client stands for every caller of the shop: the per-caller limit is raised (the limiter
# still runs on every request, so its cost is measured), never switched off.
SHOP_RATE_LIMIT = {"RATE_LIMIT_PER_S": "1000000", "RATE_LIMIT_BURST": "1000000"}


async def run_load(targets: list[tuple[str, int]], path: str, make_body: Callable[[int], dict], *, token: str,
                   concurrency: int, duration_s: float, rate: float | None = None,
                   warmup_s: float = 2.0) -> LoadResult:
    """Closed loop (rate None): each of `concurrency` connections sends back to back. Open loop (rate r):
    request i is due at start + i/r and its latency counts from that due time, so a slow server cannot
    hide queueing (no coordinated omission). Connections are spread round-robin over `targets`."""
    result = LoadResult()
    counter = 0
    start = time.perf_counter() + 0.05
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s

    async def client(n: int) -> None:
        nonlocal counter
        host, port = targets[n % len(targets)]
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                counter += 1
                i = counter
                due = start + i / rate if rate else time.perf_counter()
                if due >= stop_at or time.perf_counter() >= stop_at + 5:
                    break
                body = json.dumps(make_body(i)).encode()
                request = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
                if rate and (wait := due - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)
                t0 = due if rate else time.perf_counter()
                writer.write(request)
                status, _ = await _read_response(reader)
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    result.latencies.append(t1 - t0)
                    result.statuses[status] = result.statuses.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(client(n) for n in range(concurrency)))
    result.elapsed = duration_s
    return result
