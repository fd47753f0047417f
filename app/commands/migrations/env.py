"""Alembic environment: runs the write-model migrations against the write model of the settings.

The connection is made from connectors.postgres.conninfo (WRITE_DB_URL with WRITE_DB_PASSWORD and the TLS
settings), handed over in memory by app.commands.migrate (Config.attributes), never as the `sqlalchemy.url`
option, which Alembic may print. An explicit `sqlalchemy.url` (a hand-made alembic.ini) is still honoured.
"""
from __future__ import annotations

from alembic import context
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import create_engine

from app.settings import get_settings
from connectors import postgres


def engine_for(config):
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return create_engine(url, connect_args={"connect_timeout": postgres.connect_timeout(get_settings())})
    conninfo = config.attributes.get("conninfo") or postgres.conninfo(get_settings())
    timeout = config.attributes.get("connect_timeout") or postgres.connect_timeout(get_settings())
    # SQLAlchemy hands psycopg its own (empty) conninfo: the parameters go in as keywords.
    return create_engine("postgresql+psycopg://",
                         connect_args={**conninfo_to_dict(conninfo), "connect_timeout": timeout})


def run_migrations_online() -> None:
    engine = engine_for(context.config)
    with engine.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
