"""The local stack's registry probe: a connection the server drops once without answering is asked again;
a server that keeps dropping it is unhealthy, with the reason."""
from __future__ import annotations

import json
import socket
import threading

from deploy.local.services.registry import SchemaRegistry


def serve(drops: int) -> tuple[int, threading.Thread]:
    """A loopback HTTP server that closes the first `drops` connections without a word, then answers JSON."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]

    def run() -> None:
        with listener:
            for n in range(drops + 1):
                conn, _ = listener.accept()
                with conn:
                    conn.recv(65536)
                    if n < drops:
                        continue
                    body = json.dumps(["subject-a"]).encode()
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return port, thread


def test_a_connection_dropped_once_is_asked_again(monkeypatch):
    port, thread = serve(drops=1)
    monkeypatch.setenv("SCHEMA_REGISTRY_PORT", str(port))
    assert SchemaRegistry()._get_json("/apis/ccompat/v7/subjects", timeout=2) == (200, ["subject-a"])
    thread.join(5)


def test_a_server_that_keeps_dropping_connections_is_unhealthy(monkeypatch):
    port, thread = serve(drops=3)
    monkeypatch.setenv("SCHEMA_REGISTRY_PORT", str(port))
    health = SchemaRegistry().probe(paths=None)
    assert not health.healthy and "RemoteDisconnected" in health.detail
