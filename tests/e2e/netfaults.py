"""Real TCP endpoints that misbehave the way networks do, for pointing a client at instead of a server.

- `silent()`: accepts connections and never answers (a hung server, a black-holed route);
- `dropping(after_s)`: accepts, then closes each connection unanswered after `after_s` (a load
  balancer giving up on a dead backend);
- `refusing()`: a port bound without listening, so every connect is refused for as long as it is held;
- `proxy(host, port)`: relays to a real server until `.go_silent()`; from then on it relays nothing and
  answers nothing, on open connections and new ones alike (the server "hangs" mid-session).

Nothing here speaks any protocol: clients meet only TCP behaviour.
"""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Endpoint:
    """A listener on 127.0.0.1 whose connections get `mode` treatment; close() ends everything."""

    def __init__(self, mode: str, after_s: float = 0.0, upstream: tuple[str, int] | None = None) -> None:
        self.mode = mode
        self.after_s = after_s
        self.upstream = upstream
        self.held: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, name=f"netfault-{mode}-{self.port}", daemon=True).start()

    def url(self, scheme: str, path: str = "/") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def go_silent(self) -> None:
        self.mode = "silent"

    def _hold(self, sock: socket.socket) -> None:
        with self.lock:
            self.held.append(sock)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._hold(conn)
            if self.mode == "drop":
                timer = threading.Timer(self.after_s, _close, (conn,))
                timer.daemon = True
                timer.start()
            elif self.mode == "forward" and self.upstream is not None:
                try:
                    upstream = socket.create_connection(self.upstream, timeout=5)
                except OSError:
                    _close(conn)
                    continue
                upstream.settimeout(None)
                self._hold(upstream)
                for src, dst in ((conn, upstream), (upstream, conn)):
                    threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Relay bytes while forwarding; once silent, swallow them and keep both sockets open."""
        while True:
            try:
                data = src.recv(65536)
                if not data:
                    return
                if self.mode == "forward":
                    dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        _close(self.listener)
        with self.lock:
            for sock in self.held:
                _close(sock)
            self.held.clear()


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


class Faults:
    """Makes endpoints and closes all of them at the end (see `faults()`)."""

    def __init__(self) -> None:
        self.endpoints: list[Endpoint] = []
        self.refusing_sockets: list[socket.socket] = []

    def silent(self) -> Endpoint:
        return self._add(Endpoint("silent"))

    def dropping(self, after_s: float) -> Endpoint:
        return self._add(Endpoint("drop", after_s=after_s))

    def proxy(self, host: str, port: int) -> Endpoint:
        return self._add(Endpoint("forward", upstream=(host, port)))

    def refusing(self) -> int:
        """A port nothing accepts on: bound (so no one else takes it) but never listening."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.refusing_sockets.append(sock)
        return sock.getsockname()[1]

    def _add(self, endpoint: Endpoint) -> Endpoint:
        self.endpoints.append(endpoint)
        return endpoint

    def close(self) -> None:
        for endpoint in self.endpoints:
            endpoint.close()
        for sock in self.refusing_sockets:
            _close(sock)


@contextmanager
def faults() -> Iterator[Faults]:
    made = Faults()
    try:
        yield made
    finally:
        made.close()
