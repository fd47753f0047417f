"""A worker's HTTP probes on its metrics port: `/metrics` (Prometheus), `/healthz` (the process serves:
liveness) and `/readyz` (tables restored and every store it needs answering: readiness).

Readiness is false while the worker waits out a store outage, so an operator (or Kubernetes) sees which
workers are holding back, without anyone restarting them: an outage is not a reason to exit.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from agents.outages import StoreHealth

StartResponse = Callable[[str, list[tuple[str, str]]], object]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the library's signature
        """Probes arrive every few seconds; they are not worth a log line each."""


class _ThreadingWSGIServer(WSGIServer):
    daemon_threads = True


def probe_app(health: StoreHealth) -> Callable[[dict, StartResponse], Iterable[bytes]]:
    metrics = make_wsgi_app()

    def app(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            return _json(start_response, 200, {"status": "alive"})
        if path == "/readyz":
            body = {"ready": health.ready, "tables_restored": health.started, "waiting_for": sorted(health.down),
                    "outage_s": round(health.outage_s(), 1)}
            return _json(start_response, 200 if health.ready else 503, body)
        return metrics(environ, start_response)

    return app


def _json(start_response: StartResponse, status: int, body: dict) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(f"{status} {'OK' if status == 200 else 'Service Unavailable'}",
                   [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def serve_probes(health: StoreHealth, port: int, host: str = "127.0.0.1") -> WSGIServer:
    """Serve the probes from a daemon thread; returns the server (its `server_port` is the bound port)."""
    server = make_server(host, port, probe_app(health), server_class=_ThreadingWSGIServer,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="worker-probes", daemon=True).start()
    return server
