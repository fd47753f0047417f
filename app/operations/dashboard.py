"""The live operations dashboard of the query API: `GET /dashboard` (one self-contained HTML page,
app/operations/dashboard_page.py and templates/dashboard.html) and `GET /api/ops/pipeline` (the JSON it
polls, collected by app/operations/dashboard_data.py: per projection offsets, lag and throughput; dead
letters; rebuilds in progress).

Every Kafka call is bounded by `connect_timeout_s` and runs in a worker thread; an unreachable Kafka
(or schema registry) answers 503 `service_unavailable` naming the service, missing topics 503
`not_set_up`, and the page then shows a banner instead of numbers it does not have. Like /readyz, both
routes are operational and left out of the OpenAPI document, which describes the read-model queries.
"""
from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from app.http.errors import error_body
from app.http.identity import requires
from app.http.rate_limit import rate_limited
from app.operations.lag import LagError
from agents.projections import PROJECTIONS
from app.operations.dashboard_data import (  # noqa: F401  (re-exported: the dashboard's data model)
    DLQ_MAX_RECORDS_PER_CALL, MIN_SAMPLE_INTERVAL_S, UNKNOWN_PROJECTION, WINDOW_S, DeadLetterCounts,
    DeadLetterTally, PipelineMonitor, Point, Samples, list_groups, make_point, position_of, rebuild_projection,
    tally_headers, throughput)
from app.operations.dashboard_page import CHARTS, METRICS, render_card, render_page  # noqa: F401
from connectors import ServiceUnavailable, kafka
from domain import access

DEFAULT_REFRESH_S = 2

router = APIRouter()


def monitor(request: Request) -> PipelineMonitor:
    """The process's one monitor, made on first use from the app's settings."""
    state = request.app.state
    if getattr(state, "pipeline_monitor", None) is None:
        state.pipeline_monitor = PipelineMonitor(state.settings)
    return state.pipeline_monitor


# ---- routes ---------------------------------------------------------------------------------------

@router.get("/api/ops/pipeline", name="PipelineStatus", include_in_schema=False,
            dependencies=[Depends(requires(*access.OPERATIONS)), Depends(rate_limited)],
            summary="Per projection offsets, lag and throughput; dead letters; rebuilds in progress")
async def pipeline_status(request: Request) -> Response:
    try:
        doc = await monitor(request).document()
    except ServiceUnavailable as exc:
        return JSONResponse(error_body("service_unavailable", str(exc), service=exc.service), status_code=503,
                            headers={"Retry-After": "1"})
    except LagError as exc:
        return JSONResponse(error_body("not_set_up", str(exc), service=kafka.SERVICE), status_code=503,
                            headers={"Retry-After": "5"})
    return Response(orjson.dumps(doc), media_type="application/json", headers={"Cache-Control": "no-store"})


@router.get("/dashboard", name="Dashboard", response_class=HTMLResponse, include_in_schema=False,
            summary="Live operations page (polls /api/ops/pipeline)")
async def dashboard(refresh: Annotated[int, Query(ge=1, le=60, description="Refresh interval in seconds (1-60)")]
                    = DEFAULT_REFRESH_S) -> HTMLResponse:
    return HTMLResponse(render_page(PROJECTIONS, refresh), headers={"Cache-Control": "no-store"})
