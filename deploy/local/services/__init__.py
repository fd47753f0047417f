"""One recipe per local server: how to install it into the cache, start it, and tell its version."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deploy.local.base import StackPaths, read_pid, stop_pid


@dataclass
class Health:
    healthy: bool
    version: str = "?"
    detail: str = ""
    restart_needed: bool = False


class Service:
    """A local server. Subclasses implement install/start/probe; stop defaults to the pidfile."""

    name: str = ""
    host: str = "127.0.0.1"
    port: int = 0
    startup_timeout: float = 120.0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def installed(self, paths: StackPaths) -> bool:
        raise NotImplementedError

    def install(self, paths: StackPaths) -> None:
        """Idempotently install into paths.install_dir(self.name); raise StackError on failure."""
        raise NotImplementedError

    def start(self, paths: StackPaths) -> None:
        """Start the server detached (base.spawn) after preparing its data dir; do not wait for health."""
        raise NotImplementedError

    def probe(self, paths: StackPaths) -> Health:
        """A real, quick (<= 3 s) health check through the service's own protocol."""
        raise NotImplementedError

    def running(self, paths: StackPaths) -> bool:
        return read_pid(paths, self.name) is not None

    def stop(self, paths: StackPaths) -> None:
        stop_pid(paths, self.name)

    def log_file(self, paths: StackPaths) -> Path:
        return paths.log(self.name)
