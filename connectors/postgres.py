"""PostgreSQL (the write model) through psycopg 3."""
from __future__ import annotations

import psycopg

from app.settings import Settings
from connectors import ServiceInfo, ServiceUnavailable

SERVICE = "postgresql"


def _redacted(url: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def connect(settings: Settings, **kwargs) -> psycopg.Connection:
    """A plain connection that fails within the connect timeout instead of hanging."""
    try:
        return psycopg.connect(settings.write_db_url, connect_timeout=max(1, int(settings.connect_timeout_s)),
                               **kwargs)
    except psycopg.OperationalError as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        reason = lines[0].split(": ", 1)[-1] if lines else type(exc).__name__
        raise ServiceUnavailable(SERVICE, _redacted(settings.write_db_url), reason) from None


def check(settings: Settings) -> ServiceInfo:
    with connect(settings) as conn:
        version = conn.execute("show server_version").fetchone()[0]
    return ServiceInfo(SERVICE, _redacted(settings.write_db_url), version)
