"""`cqrs token issue` as a user runs it: a subprocess, the token alone on stdout, one-line refusals."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from app.http.identity import TokenVerifier
from app.settings import Settings
from domain.access import Role
from tests.conftest import ROOT

SECRET = "c" * 40


def cqrs(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", "token", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "AUTH_JWT_SECRET": SECRET, **env})


def test_issue_prints_a_token_the_services_accept():
    done = cqrs("issue", "--role", "customer", "--customer-id", "ada", "--ttl", "30m")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert "\n" not in token and done.stderr == ""
    principal = asyncio.run(TokenVerifier(Settings(auth_jwt_secret=SECRET)).principal(token))
    assert (principal.roles, principal.customer_id, principal.subject) == \
        (frozenset({Role.customer}), "ada", "customer:ada")


@pytest.mark.parametrize("args, reason", [
    (("issue", "--role", "customer"), "--role customer needs --customer-id"),
    (("issue", "--role", "admin", "--customer-id", "ada"), "--customer-id is only for --role customer"),
    (("issue", "--role", "admin", "--ttl", "forever"), "--ttl 'forever'"),
    (("issue", "--role", "admin", "--ttl", "90d"), "between 1s and 30d"),
])
def test_bad_arguments_get_one_line(args: tuple[str, ...], reason: str):
    done = cqrs(*args)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and reason in done.stderr, done.stderr


def test_with_a_provider_configured_tokens_are_not_issued_here():
    done = cqrs("issue", "--role", "admin", AUTH_JWKS_URL="https://id.example/jwks")
    assert done.returncode == 2 and "identity provider issues them" in done.stderr, done.stderr


def test_a_bad_setting_is_one_line_naming_it():
    done = cqrs("issue", "--role", "admin", AUTH_JWT_SECRET="too-short")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "at least 32 characters" in done.stderr
