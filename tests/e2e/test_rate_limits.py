"""Per-caller rate limits as a client meets them: past its burst a caller gets 429 with the error shape
and `Retry-After`, other callers are unaffected, the bucket refills, replicas share it through Redis,
and with Redis unreachable the limit still holds (kept in process) while commands go on."""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from app.http.identity import issue_token
from app.operations import processes
from app.settings import Settings
from domain.access import Role
from tests.e2e.conftest import Gateway, gateway_spawner, make_client

LIMITS = {"RATE_LIMIT_PER_S": "2", "RATE_LIMIT_BURST": "4", "OUTBOX_RELAY_ENABLED": "false"}


@pytest.fixture(scope="module")
def limited(setup_done: None, gateway_logs) -> Iterator:
    with gateway_spawner(gateway_logs) as spawn:
        def start(name: str, **env: str) -> Gateway:
            gateway = spawn(f"limited-{name}", **LIMITS, **env)
            gateway.wait_ready(leader=None)
            return gateway
        yield start


def admin_token(settings: Settings) -> str:
    return issue_token(settings, [Role.admin], subject=f"limits-{uuid.uuid4().hex[:8]}")


def burst(client: httpx.Client, path: str, count: int) -> list[httpx.Response]:
    return [client.get(path) if path.startswith("/api/products/search") else
            client.patch(path, json={"name": "x"}) for _ in range(count)]


def test_past_its_burst_a_caller_gets_429_and_others_do_not(limited, settings: Settings):
    gateway = limited("a")
    with make_client(gateway.url, admin_token(settings)) as noisy, \
            make_client(gateway.url, admin_token(settings)) as quiet:
        answers = burst(noisy, f"/api/products/{uuid.uuid4()}", 6)
        assert [r.status_code for r in answers[:4]] == [404] * 4  # admitted: the product does not exist
        refused = answers[-1]
        assert refused.status_code == 429 and refused.json()["code"] == "rate_limited", refused.text
        assert 1 <= int(refused.headers["Retry-After"]) <= 2
        assert quiet.patch(f"/api/products/{uuid.uuid4()}", json={"name": "x"}).status_code == 404
        time.sleep(int(refused.headers["Retry-After"]))
        assert noisy.patch(f"/api/products/{uuid.uuid4()}", json={"name": "x"}).status_code == 404


def test_replicas_share_a_callers_bucket(limited, settings: Settings):
    first, second = limited("b1"), limited("b2")
    token = admin_token(settings)
    with make_client(first.url, token) as a, make_client(second.url, token) as b:
        statuses = [c.patch(f"/api/products/{uuid.uuid4()}", json={"name": "x"}).status_code
                    for c in (a, b, a, b, a, b)]
    assert statuses.count(429) >= 2, statuses


def test_with_redis_unreachable_the_limit_holds_and_commands_go_on(limited, settings: Settings):
    gateway = limited("noredis", REDIS_URL="redis://127.0.0.1:9/0")
    with make_client(gateway.url, admin_token(settings)) as client:
        started = time.monotonic()
        statuses = [r.status_code for r in burst(client, f"/api/products/{uuid.uuid4()}", 6)]
        assert time.monotonic() - started < 5, "a dead Redis slowed every request down"
    assert statuses[:4] == [404] * 4 and statuses[-1] == 429, statuses


def test_the_query_api_limits_anonymous_callers_by_address(spawn_query_api):
    api: processes.AppProcess = spawn_query_api("limited", **LIMITS)
    with httpx.Client(base_url=api.base_url or "", timeout=10) as anonymous:
        statuses = [r.status_code for r in burst(anonymous, "/api/products/search?q=x", 6)]
    assert statuses[:4] == [200] * 4 and statuses[-1] == 429, statuses
