"""The frame both HTTP services share: error shape, body limit, latency metrics, admission (overload
shedding), identity, rate limits, /healthz and /metrics."""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest

from app.http.admission import Admission
from app.http.errors import install_error_handlers
from app.http.identity import TokenVerifier, requires
from app.http.limits import BodySizeLimit
from app.http.metrics import RouteLatency
from app.http.rate_limit import RateLimiter
from app.settings import Settings
from connectors.redis import async_redis_client
from domain.access import OPERATIONS


def service_app(*, title: str, description: str, lifespan, settings: Settings, latency: Histogram,
                label: str) -> FastAPI:
    """A FastAPI app with the shared plumbing; the caller adds its routes and /readyz. Token verification
    is set up here, so a service without a way to verify tokens refuses to start."""
    verifier = TokenVerifier(settings)

    @contextlib.asynccontextmanager
    async def framed(app: FastAPI) -> AsyncIterator[None]:
        limits = async_redis_client(settings)
        app.state.rate_limiter = RateLimiter(limits, label, settings.rate_limit_per_s, settings.rate_limit_burst)
        try:
            async with lifespan(app):
                yield
        finally:
            await limits.aclose()

    app = FastAPI(title=title, version="0.1.0", lifespan=framed, description=description)
    app.state.settings = settings
    app.state.verifier = verifier
    install_error_handlers(app)

    @app.get("/healthz", name="healthz", include_in_schema=False)
    async def healthz() -> dict:
        return {"status": "ok"}

    guard = [] if settings.metrics_public else [Depends(requires(*OPERATIONS))]

    @app.get("/metrics", name="metrics", include_in_schema=False, dependencies=guard)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # The last added is outermost. A request meets: the body limit (a declared oversized body is a 413 that
    # takes no slot: a permanent refusal, not "retry later"), then route latency (so an admitted request's
    # wait for a slot counts in its latency; a shed one never matches a route and is counted as shed
    # instead), then admission, then Starlette's routing, dependencies (identity, rate limit) and handlers:
    # a shed request never reaches them.
    app.add_middleware(Admission, max_in_flight=settings.max_in_flight, wait_ms=settings.admission_wait_ms,
                       target_ms=settings.admission_target_ms, floor=settings.admission_floor,
                       busy_cores=settings.admission_busy_cores, service=label)
    app.add_middleware(RouteLatency, histogram=latency, label=label)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app
