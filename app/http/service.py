"""The frame both HTTP services share: error shape, body limit, latency metrics, /healthz, /metrics."""
from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import Histogram, make_asgi_app

from app.http.errors import install_error_handlers
from app.http.limits import BodySizeLimit
from app.http.metrics import RouteLatency
from app.settings import Settings


def service_app(*, title: str, description: str, lifespan, settings: Settings, latency: Histogram,
                label: str) -> FastAPI:
    """A FastAPI app with the shared plumbing; the caller adds its routes and /readyz."""
    app = FastAPI(title=title, version="0.1.0", lifespan=lifespan, description=description)
    app.state.settings = settings
    install_error_handlers(app)

    @app.get("/healthz", name="healthz", include_in_schema=False)
    async def healthz() -> dict:
        return {"status": "ok"}

    app.mount("/metrics", make_asgi_app())
    app.add_middleware(RouteLatency, histogram=latency, label=label)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app
