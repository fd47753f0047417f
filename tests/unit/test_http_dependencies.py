"""Both HTTP services resolve every request on the event loop: FastAPI runs a plain-function dependency
or endpoint in its thread pool, a thread hand-off per request (a sync dependency of every query
endpoint was ~6% of the query API's CPU under load)."""
from __future__ import annotations

import inspect

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.commands.api import create_app as gateway_app
from app.queries.api import create_app as query_app
from app.settings import Settings


def sync_calls(dependant: Dependant, path: list[str]) -> list[str]:
    found = []
    call = dependant.call
    if call is not None:
        target = call if inspect.isfunction(call) or inspect.ismethod(call) else getattr(call, "__call__", call)
        if not inspect.iscoroutinefunction(target):
            found.append(" <- ".join([getattr(call, "__name__", type(call).__name__), *path]))
    for sub in dependant.dependencies:
        found += sync_calls(sub, [getattr(dependant.call, "__name__", "?"), *path])
    return found


def api_routes(routes) -> list[APIRoute]:
    """Every endpoint, also those of included routers (FastAPI >= 0.16x keeps them behind an include)."""
    found = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif (included := getattr(route, "original_router", None)) is not None:
            found += api_routes(included.routes)
    return found


@pytest.mark.parametrize("create_app", [gateway_app, query_app], ids=["gateway", "query-api"])
def test_no_dependency_or_endpoint_runs_in_the_thread_pool(create_app):
    app = create_app(Settings(auth_jwt_secret="x" * 32))
    routes = api_routes(app.routes)
    assert len(routes) >= 5, routes
    offenders = [call for r in routes for call in sync_calls(r.dependant, [r.path])]
    assert offenders == []
