"""Request latency by route name and outcome, and the /metrics endpoint."""
from __future__ import annotations

import time

from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class RouteLatency:
    """Observe each request's duration under the matched route's name and the response status."""

    def __init__(self, app: ASGIApp, histogram: Histogram, label: str) -> None:
        self.app = app
        self.histogram = histogram
        self.label = label

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            name = getattr(route, "name", None)
            if name and name not in ("metrics", "healthz", "readyz"):
                self.histogram.labels(**{self.label: name, "outcome": str(status)}).observe(time.perf_counter() - t0)
