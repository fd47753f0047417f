"""The local stack's services refuse clients without the generated credentials and accept the
connectors' clients, which find them in <state>/secrets (Redis ACL user; PostgreSQL role password)."""
from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import psycopg
import pytest
import redis as redis_py

from app.settings import Settings
from connectors import postgres, redis
from tests.conftest import stack_command


def test_redis_refuses_a_client_without_credentials(stack: Settings) -> None:
    address = urlsplit(stack.redis_url)
    anonymous = redis_py.Redis(host=address.hostname, port=address.port or 6379, socket_connect_timeout=3)
    try:
        with pytest.raises((redis_py.AuthenticationError, redis_py.ResponseError), match="(?i)auth"):
            anonymous.ping()
    finally:
        anonymous.close()


def test_redis_refuses_a_wrong_password(stack: Settings) -> None:
    client = redis.redis_client(stack.model_copy(update={"redis_password": "not-the-password"}))
    try:
        with pytest.raises(redis_py.AuthenticationError):
            client.ping()
    finally:
        client.close()


def test_connectors_redis_clients_authenticate(stack: Settings) -> None:
    assert stack.redis_username and stack.redis_password, "the stack's secrets were not read"
    client = redis.redis_client(stack)
    try:
        assert client.ping() is True
        assert client.acl_whoami() == stack.redis_username
    finally:
        client.close()


def test_postgres_wants_the_generated_password(stack: Settings) -> None:
    assert stack.write_db_password is not None and ":" not in stack.write_db_url.split("://")[1].split("@")[0]
    with postgres.connect(stack) as conn:
        assert conn.execute("select current_user").fetchone()[0] == "cqrs"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(stack.write_db_url, password="not-the-password", connect_timeout=3).close()


def test_script_writes_survive_a_restart_with_the_acl(stack: Settings) -> None:
    """A Lua script's writes reach the append-only file as MULTI/EXEC; Redis 7.0 replays that file as the
    `default` user, so with `default` switched off every such write was dropped at the next start (the
    sales ledgers are written this way)."""
    client = redis.redis_client(stack.model_copy(update={"redis_url": stack.redis_url.rsplit("/", 1)[0] + "/13"}))
    key = f"restart-probe:{uuid.uuid4().hex}"
    try:
        client.eval("redis.call('HSET', KEYS[1], 'seq', '7'); redis.call('EXPIRE', KEYS[1], 600); return 1", 1, key)
        stack_command("down", "redis")
        stack_command("up", "redis")
        assert client.hget(key, "seq") == "7"
    finally:
        client.delete(key)
        client.close()
