"""Start the pipeline's own processes (gateway, query API, workers) as children and wait until ready.

Used by the demo, the benchmarks and the end-to-end tests, so they all run processes exactly the
way an operator does: through the `cqrs` command.
"""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


SERVER_PORTS = range(20_000, 32_000)
"""Below Linux's default ephemeral range (32768-60999): a port chosen here is not taken between the choice
and the child's bind by the outgoing connection of some client, as a port the kernel picked could be."""


def free_port() -> int:
    """A port nothing listens on now, for a child process to bind (random, so parallel runs rarely meet)."""
    for _ in range(100):
        port = random.choice(SERVER_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {SERVER_PORTS.start}-{SERVER_PORTS.stop - 1} after 100 tries")


def stop_process(proc: subprocess.Popen, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int:
    """Send `sig` and wait up to `timeout`; SIGKILL if the process is still there. Returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


@dataclass
class AppProcess:
    name: str
    proc: subprocess.Popen
    log_path: Path
    base_url: str | None = None

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int:
        return stop_process(self.proc, timeout, sig)

    def kill(self) -> None:
        self.stop(timeout=5, sig=signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def start(name: str, args: list[str], *, log_dir: Path, env: dict[str, str] | None = None,
          port: int | None = None, ready_path: str | None = "/readyz", timeout: float = 60.0) -> AppProcess:
    """Run `cqrs <args>` and, for HTTP servers, wait (bounded) until `ready_path` answers 200."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    cmd = [sys.executable, "-m", "app.cli", *args]
    if port is not None:
        cmd += ["--port", str(port)]
    out = log_path.open("ab")
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    out.close()
    app = AppProcess(name, proc, log_path, f"http://127.0.0.1:{port}" if port else None)
    if app.base_url and ready_path:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} during startup: {app.log_tail(10)}")
            try:
                if httpx.get(app.base_url + ready_path, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                app.kill()
                raise RuntimeError(f"{name} not ready after {timeout:.0f}s; log: {log_path}")
            time.sleep(0.2)
    return app
