"""PostgreSQL (the write model) through psycopg 3."""
from __future__ import annotations

from typing import Any, Protocol

import psycopg

from connectors import ServiceInfo, ServiceUnavailable, secret


class Settings(Protocol):
    """The settings this connector reads: the application passes its settings object in (never imported here)."""

    write_db_url: str
    connect_timeout_s: float
    write_db_password: Any  # SecretStr | None
    write_db_sslmode: str | None
    write_db_sslrootcert: str | None


SERVICE = "postgresql"


def _redacted(url: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def redacted(settings: Settings) -> str:
    """host:port/dbname of the write model, for logs and errors (never the password)."""
    return _redacted(settings.write_db_url)


def conninfo(settings: Settings) -> str:
    """The libpq connection string every connection to the write model uses (sync and async connections,
    pools, migrations): WRITE_DB_URL with WRITE_DB_PASSWORD (which wins over a password in the URL) and
    the TLS settings. It holds the password: pass it to psycopg only, never to a log or an error."""
    extra = {"password": secret(settings.write_db_password), "sslmode": settings.write_db_sslmode,
             "sslrootcert": settings.write_db_sslrootcert}
    return psycopg.conninfo.make_conninfo(settings.write_db_url, **{k: v for k, v in extra.items() if v})


def connect_timeout(settings: Settings) -> int:
    """libpq's connect_timeout (whole seconds, at least 1)."""
    return max(1, int(settings.connect_timeout_s))


def connect(settings: Settings, **kwargs) -> psycopg.Connection:
    """A plain connection that fails within the connect timeout instead of hanging."""
    try:
        return psycopg.connect(conninfo(settings), connect_timeout=connect_timeout(settings), **kwargs)
    except psycopg.OperationalError as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        reason = lines[0].split(": ", 1)[-1] if lines else type(exc).__name__
        raise ServiceUnavailable(SERVICE, _redacted(settings.write_db_url), reason) from None


def check(settings: Settings) -> ServiceInfo:
    with connect(settings) as conn:
        version = conn.execute("show server_version").fetchone()[0]
    return ServiceInfo(SERVICE, _redacted(settings.write_db_url), version)


def try_advisory_lock(conn: psycopg.Connection, key: int) -> bool:
    """Take the session-level advisory lock `key` if free; it is released when the session ends."""
    return bool(conn.execute("select pg_try_advisory_lock(%s)", (key,)).fetchone()[0])


def advisory_lock_holder(conn: psycopg.Connection, key: int) -> str | None:
    """Who holds advisory lock `key`: the session's application name, client address and backend pid."""
    row = conn.execute(
        "select coalesce(nullif(a.application_name, ''), 'a session') || ' from ' || coalesce(a.client_addr::text, "
        "'local socket') || ' (backend ' || a.pid || ', since ' || to_char(a.backend_start at time zone 'UTC', "
        "'YYYY-MM-DD HH24:MI:SS') || ' UTC)' from pg_locks l join pg_stat_activity a using (pid) "
        "where l.locktype = 'advisory' and l.granted and l.objsubid = 1 "
        "and l.database = (select oid from pg_database where datname = current_database()) "
        "and ((l.classid::bigint << 32) | l.objid::bigint) = %s", (key,)).fetchone()
    return row[0] if row else None
