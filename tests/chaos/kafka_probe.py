"""Kafka offsets for the chaos harness, read by a child process.

librdkafka 2.16 clients that were connected while the broker restarted have crashed their whole process
(SIGSEGV in rdk:main). In the harness that process was the test run itself, so every Kafka request of a
chaos run goes through this child: a crash costs one probe ("not yet") and a new child, never the run.
The child makes one client per request, so no client lives through more than one request.

The protocol is one JSON line per request on stdin and one JSON line per answer on stdout:
    {"op": "ends", "tps": [[topic, partition], ...]}                 -> {"ok": [[topic, partition, offset], ...]}
    {"op": "committed", "group": g, "tps": [[topic, partition], ...]} -> {"ok": [[topic, partition, offset|null], ...]}
    {"op": "drop", "topics_with": s, "groups": [g, ...]}            -> {"ok": true}
and {"error": "one line"} when Kafka did not answer.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Partition = tuple[str, int]
STARTUP_S = 15.0   # importing confluent-kafka and the settings on 2 busy cores


class KafkaProbe:
    """The harness side: a child process that is started on first use and again after it died or hung."""

    def __init__(self, env: dict[str, str], root: Path, say: Callable[[str], None] = lambda _: None) -> None:
        self.env, self.root, self.say = env, root, say
        self.proc: subprocess.Popen[str] | None = None
        self.crashes = 0
        self.started = 0.0

    def start(self) -> None:
        """Start the child now (it imports its client library before it reads a request)."""
        if self.proc is None:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.chaos.kafka_probe"], cwd=self.root,
                                         env={**os.environ, **self.env}, text=True, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            self.started = time.monotonic()

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def ask(self, request: dict[str, Any], timeout: float) -> Any:
        """The answer's value, or None if Kafka did not answer, or the child died or took over `timeout`."""
        self.start()
        if time.monotonic() - self.started < STARTUP_S:
            timeout += STARTUP_S
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            line = self.proc.stdout.readline() if ready else ""
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self._replace()
            return None
        answer = json.loads(line)
        return answer.get("ok") if "error" not in answer else None

    def _replace(self) -> None:
        assert self.proc is not None
        code = self.proc.poll()
        if code is None:
            self.proc.kill()
            code = self.proc.wait(timeout=10)
        if code < 0:
            self.crashes += 1
            self.say(f"kafka probe died of {signal.Signals(-code).name}; the next probe starts a new one")
        self.proc = None

    def end_offsets(self, tps: list[Partition], timeout: float) -> dict[Partition, int] | None:
        found = self.ask({"op": "ends", "tps": tps, "timeout": timeout}, timeout + 1.0)
        return None if found is None else {(t, p): o for t, p, o in found}

    def committed(self, group: str, tps: list[Partition], timeout: float) -> dict[Partition, int | None] | None:
        found = self.ask({"op": "committed", "group": group, "tps": tps, "timeout": timeout}, timeout + 1.0)
        return None if found is None else {(t, p): o for t, p, o in found}


def _serve(request: dict[str, Any]) -> Any:
    from app.settings import Settings
    from connectors import kafka

    settings = Settings()
    tps = [tuple(tp) for tp in request.get("tps", [])]
    timeout = float(request.get("timeout", 5.0))
    if request["op"] == "ends":
        return [[t, p, o] for (t, p), o in kafka.end_offsets(settings, tps, timeout=timeout).items()]
    if request["op"] == "committed":
        found = kafka.committed_offsets(settings, request["group"], tps, timeout=timeout)
        return [[t, p, o] for (t, p), o in found.items()]
    if request["op"] == "drop":
        names = kafka.admin_client(settings).list_topics(timeout=timeout).topics
        kafka.delete_topics(settings, [t for t in names if request["topics_with"] in t])
        kafka.delete_consumer_groups(settings, request["groups"])
        return True
    raise ValueError(f"unknown op {request['op']!r}")


def main() -> None:
    import connectors.kafka  # noqa: F401 - paid at start, not by the first request

    for line in sys.stdin:
        started = time.monotonic()
        try:
            answer: dict[str, Any] = {"ok": _serve(json.loads(line))}
        except Exception as exc:  # noqa: BLE001 - any failure is "Kafka did not answer" to the harness
            answer = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
                      "after_s": round(time.monotonic() - started, 2)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
