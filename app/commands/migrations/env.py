"""Alembic environment: runs the write-model migrations against WRITE_DB_URL."""
from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from app.commands.migrate import sqlalchemy_url
from app.settings import get_settings


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url") or sqlalchemy_url(get_settings().write_db_url)
    engine = create_engine(url, connect_args={"connect_timeout": int(get_settings().connect_timeout_s)})
    with engine.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
