"""Alembic glue shared by every service's ``migrations/env.py``.

Each service keeps its own Alembic history in ``services/<name>/migrations/`` with its version table
in its own schema, and runs it as the schema's owner role (never as the application role).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import create_engine, pool
from sqlalchemy.exc import ArgumentError


def run_env(schema: str) -> None:
    """Body of a service's ``env.py``: online migrations only, version table in ``schema``."""
    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:  # what create_engine(None) would raise, with the reason
        raise ArgumentError("the Alembic config sets no sqlalchemy.url")
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            version_table_schema=schema,
            include_schemas=True,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()


def upgrade(migrations_dir: Path, url: str, revision: str = "head") -> None:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(config, revision)


def downgrade(migrations_dir: Path, url: str, revision: str = "base") -> None:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.downgrade(config, revision)
