"""An unreachable service fails within seconds with one line naming it and its address — never a hang."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from app.settings import Settings
from connectors import ServiceUnavailable, elasticsearch, kafka, mongo, postgres, redis, registry


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def nowhere() -> Settings:
    port = _closed_port()
    return Settings(
        kafka_bootstrap_servers=f"127.0.0.1:{port}",
        schema_registry_url=f"http://127.0.0.1:{port}/apis/ccompat/v7",
        write_db_url=f"postgresql://cqrs@127.0.0.1:{port}/cqrs",
        mongo_url=f"mongodb://127.0.0.1:{port}/",
        elasticsearch_url=f"http://127.0.0.1:{port}",
        redis_url=f"redis://127.0.0.1:{port}/0",
        connect_timeout_s=2.0,
    )


@pytest.mark.parametrize("module", [postgres, redis, mongo, elasticsearch, kafka, registry],
                         ids=lambda m: m.SERVICE)
def test_check_fails_fast_with_one_line(module, nowhere: Settings):
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailable) as info:
        module.check(nowhere)
    elapsed = time.monotonic() - t0
    message = str(info.value)
    assert elapsed < 8, f"{module.SERVICE} took {elapsed:.1f}s to fail"
    assert "\n" not in message
    assert message.startswith(f"{module.SERVICE} unreachable at ")
    assert str(nowhere.kafka_bootstrap_servers.split(":")[1]) in message


def test_cli_names_the_unreachable_service_and_exits_nonzero(nowhere: Settings):
    env = {"REDIS_URL": nowhere.redis_url, "CONNECT_TIMEOUT_S": "2", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "app.cli", "check"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 2
    redis_line = [ln for ln in proc.stdout.splitlines() if "redis" in ln]
    assert len(redis_line) == 1
    assert redis_line[0].startswith(f"FAIL  redis unreachable at {nowhere.redis_url}: ")
    assert "refused" in redis_line[0].lower()
