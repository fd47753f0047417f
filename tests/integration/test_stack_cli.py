"""The stack manager and the smoke job, run the way a user runs them: as commands."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT, STACK

EXPECTED_VERSIONS = {
    "postgres": r"1[5-9](\.\d+)?",
    "redis": r"\d+\.\d+\.\d+",
    "kafka": r"4\.\d+\.\d+",
    "elasticsearch": r"8\.\d+\.\d+",
    "ferretdb": r"1\.24\.\d+",
    "registry": r"\S+",
}


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_status_table_shows_every_service_healthy_with_its_version(stack):
    proc = _run(str(STACK), "status")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["SERVICE", "ADDRESS", "VERSION", "HEALTHY"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:] if ln.split() and ln.split()[0] in EXPECTED_VERSIONS}
    assert set(rows) == set(EXPECTED_VERSIONS)
    for name, pattern in EXPECTED_VERSIONS.items():
        _, address, version, healthy = rows[name][:4]
        assert address.startswith("127.0.0.1:"), f"{name} not on loopback: {address}"
        assert re.fullmatch(pattern, version), f"{name} version {version!r}"
        assert healthy == "yes"


def test_up_is_idempotent_on_a_running_stack(stack):
    proc = _run(str(STACK), "up", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("already running") == len(EXPECTED_VERSIONS)


def test_unknown_service_is_named_in_a_one_line_error():
    proc = _run(str(STACK), "up", "cassandra")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "stack up failed: unknown service 'cassandra'; known: postgres, redis, kafka, elasticsearch, ferretdb, registry"]


def test_smoke_round_trip_through_every_service(stack):
    proc = _run(sys.executable, "-m", "app.cli", "smoke", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for service in ("postgresql", "redis", "mongodb", "elasticsearch", "kafka+registry"):
        assert re.search(rf"^  ok  {re.escape(service)}\s", proc.stdout, re.M), proc.stdout
    assert proc.stdout.rstrip().endswith("smoke round trip passed")
