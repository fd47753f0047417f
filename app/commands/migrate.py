"""Apply the write-model migrations (Alembic) — idempotent; safe to run on every start."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from app.settings import Settings
from connectors import postgres

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(settings: Settings) -> Config:
    """Alembic's configuration. The connection string (it holds the password) goes in memory to
    migrations/env.py, never into the `sqlalchemy.url` option that Alembic may print."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["conninfo"] = postgres.conninfo(settings)
    cfg.attributes["connect_timeout"] = postgres.connect_timeout(settings)
    return cfg


def migrate(settings: Settings) -> str:
    """Upgrade to the newest revision; returns it. Fails fast if PostgreSQL is unreachable."""
    postgres.check(settings)
    command.upgrade(alembic_config(settings), "head")
    with postgres.connect(settings) as conn:
        return conn.execute("select version_num from alembic_version").fetchone()[0]
