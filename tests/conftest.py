"""Shared fixtures: start or reuse the local stack, and hand tests the one settings object."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.settings import Settings
from connectors import ServiceUnavailable, elasticsearch, kafka, mongo, postgres, redis, registry
from deploy.local.base import StackPaths
from deploy.local.credentials import ensure_secrets

ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / "deploy" / "local" / "stack"
CHECKS = (postgres, redis, mongo, elasticsearch, kafka, registry)


def _unreachable(settings: Settings) -> list[str]:
    failures = []
    for module in CHECKS:
        try:
            module.check(settings)
        except ServiceUnavailable as exc:
            failures.append(str(exc))
    return failures


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The settings of the tests. The local stack's secrets are generated first (as `stack up` would do),
    so that this object carries them even when the stack is brought up after it is made."""
    if not os.environ.get("CQRS_SECRETS_DIR"):
        ensure_secrets(StackPaths.from_env())
    return Settings()


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Settings:
    """Reuse a healthy stack, or bring it up once; a service that stays down fails the test with its reason."""
    if _unreachable(settings):
        proc = subprocess.run([str(STACK), "up"], capture_output=True, text=True, timeout=1800)
        sys.stdout.write(proc.stdout)
        if proc.returncode != 0:
            pytest.fail(f"local stack did not come up: {proc.stderr.strip() or proc.stdout.strip()[-500:]}",
                        pytrace=False)
    failures = _unreachable(settings)
    if failures:
        pytest.fail("; ".join(failures), pytrace=False)
    return settings


def stack_command(action: str, service: str) -> float:
    """`deploy/local/stack <action> <service>` (e.g. to stop a store for a while); returns how long it took."""
    started = time.monotonic()
    proc = subprocess.run([str(STACK), action, service], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"stack {action} {service}: {proc.stdout}{proc.stderr}"
    return time.monotonic() - started
