"""Secrets of the local stack, generated once into <state>/secrets (dir 0700, files 0600).

Each file is named after the setting that reads it (app/settings.py reads this directory as its secrets
dir when CQRS_SECRETS_DIR is not set), so processes started beside the stack authenticate with no setup:

    redis_username     the Redis ACL user (`cqrs`; not secret, kept here so the settings' default stays None)
    redis_password     its password (also the `default` user's), so clients without it get NOAUTH
    write_db_password  the password of PostgreSQL role `cqrs` (set again on every start)
    auth_jwt_secret    the HS256 signing key of the API tokens (32 random bytes, urlsafe base64)

A value is generated only when its file is missing: deleting a file and running `stack up` again
rotates that secret (PostgreSQL and Redis take the new one at their next start). Standard library only:
the stack scripts run without the virtualenv.
"""
from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from deploy.local.base import StackPaths

REDIS_USER = "cqrs"


def _token() -> str:
    return secrets.token_urlsafe(32)  # 32 random bytes, 43 characters


GENERATED = {
    "redis_username": lambda: REDIS_USER,
    "redis_password": _token,
    "write_db_password": _token,
    "auth_jwt_secret": _token,
}


def secrets_dir(paths: StackPaths) -> Path:
    """<state>/secrets; the same path as app.settings.secrets_dir() without CQRS_SECRETS_DIR."""
    return paths.state / "secrets"


def ensure_secrets(paths: StackPaths) -> dict[str, str]:
    """Every generated secret, creating the missing (or empty) ones. A value is written to a temporary
    file and linked into place, so a crash never leaves an empty secret and recipes running side by
    side agree on one value (the first link wins)."""
    directory = secrets_dir(paths)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    values = {}
    for name, make in GENERATED.items():
        path = directory / name
        if (existing := read_secret(paths, name)) is not None:
            values[name] = existing
            continue
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(make() + "\n")
            os.chmod(temporary, 0o600)
            try:
                os.link(temporary, path)
            except FileExistsError:  # empty leftover of an older version, or another recipe won the race
                if path.stat().st_size == 0:
                    os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        values[name] = read_secret(paths, name) or ""
    return values


def read_secret(paths: StackPaths, name: str) -> str | None:
    """The secret `name` (whitespace around it dropped), or None if it was never generated or is empty."""
    try:
        value = (secrets_dir(paths) / name).read_text().strip()
    except FileNotFoundError:
        return None
    return value or None
