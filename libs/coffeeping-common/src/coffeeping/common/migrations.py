"""Alembic glue shared by every service's ``migrations/env.py``, and the wait for a migrated schema.

Each service keeps its own Alembic history in ``services/<name>/migrations/`` with its version table
in its own schema, and runs it as the schema's owner role (never as the application role).

    python -m coffeeping.common.migrations wait SERVICE [--root DIR] [--timeout 600] [--interval 2]

waits until ``SERVICE``'s schema is migrated to the head of the history under ``DIR/services/SERVICE/
migrations`` (the history the image carries), reading ``<schema>.alembic_version`` with the service's
own login (``DATABASE_URL``). It exits 0 at once when the schema is at that head, or ahead of it (a
revision this history does not know: a newer release migrated it, and migrations keep working with
the previous release); otherwise it prints one line saying why (not reachable, not migrated yet, at
an older revision) each time the reason changes, retries every ``--interval`` seconds, and exits 1
after ``--timeout`` seconds. Kubernetes runs it as each backend's init container, so a pod of a new
release starts only once the migration Job has migrated its schema.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool, text
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from coffeeping.common import services
from coffeeping.common.config import db_url


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


def _config(migrations_dir: Path, url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(migrations_dir: Path, url: str, revision: str = "head") -> None:
    command.upgrade(_config(migrations_dir, url), revision)


def downgrade(migrations_dir: Path, url: str, revision: str = "base") -> None:
    command.downgrade(_config(migrations_dir, url), revision)


@dataclass(frozen=True)
class SchemaState:
    """Whether a schema is at (or past) the expected head, and a one-line reason when it is not."""

    ready: bool
    reason: str


def schema_state(url: str, schema: str, migrations_dir: Path) -> SchemaState:
    """Compare ``schema``'s ``alembic_version`` (read through ``url``) with the heads in ``migrations_dir``."""
    script = ScriptDirectory.from_config(_config(migrations_dir))
    expected = frozenset(script.get_heads())
    want = ", ".join(sorted(expected))
    engine = create_engine(db_url(url), poolclass=pool.NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            exists = conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"),
                                  {"t": f'"{schema}".alembic_version'}).scalar()
            if not exists:
                return SchemaState(False, f"schema {schema} is not migrated yet (no {schema}.alembic_version); "
                                          f"this image expects {want}")
            current = frozenset(conn.execute(text(f'SELECT version_num FROM "{schema}".alembic_version')).scalars())
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        first = detail[0] if detail else type(exc).__name__
        return SchemaState(False, f"cannot read {schema}.alembic_version: {type(exc).__name__}: {first}")
    finally:
        engine.dispose()
    have = ", ".join(sorted(current)) or "no revision"
    if current == expected:
        return SchemaState(True, f"schema {schema} is at {want}, the head this image expects")
    unknown = {revision for revision in current if _unknown(script, revision)}
    if unknown and not (current - unknown):
        return SchemaState(True, f"schema {schema} is at {have}, newer than this image's head {want} "
                                 "(a later release migrated it)")
    return SchemaState(False, f"schema {schema} is at {have}; this image expects {want}")


def _unknown(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is None
    except Exception:  # noqa: BLE001 - Alembic raises several kinds for a revision it does not know
        return True


def wait_for_head(url: str, schema: str, migrations_dir: Path, timeout_s: float, interval_s: float,
                  say: Callable[[str], None] = print) -> bool:
    """Poll ``schema_state`` until it is ready (True) or ``timeout_s`` passes (False); ``say`` each new reason."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        state = schema_state(url, schema, migrations_dir)
        if state.ready:
            say(f"migrations: {state.reason}")
            return True
        if state.reason != last:
            say(f"migrations: waiting: {state.reason}")
            last = state.reason
        left = deadline - time.monotonic()
        if left <= 0:
            say(f"migrations: gave up after {timeout_s:g}s: {state.reason}")
            return False
        time.sleep(min(interval_s, left))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coffeeping.common.migrations",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    wait = sub.add_parser("wait", help="wait until a service's schema is at the head of its migrations")
    wait.add_argument("service", choices=sorted(s.name for s in services.BACKENDS))
    wait.add_argument("--root", type=Path, default=Path.cwd(),
                      help="the directory holding services/<service>/migrations (default: the working directory)")
    wait.add_argument("--timeout", type=float, default=600.0, help="seconds before giving up (exit 1)")
    wait.add_argument("--interval", type=float, default=2.0, help="seconds between checks")
    args = parser.parse_args(argv)
    service = services.BY_NAME[args.service]
    assert service.schema is not None  # BACKENDS have a schema
    migrations_dir = args.root / service.folder / "migrations"
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        print("migrations: DATABASE_URL is required but not set (the service's own login)", file=sys.stderr)
        return 2
    try:
        db_url(url)
    except ValueError as exc:
        print(f"migrations: DATABASE_URL {exc}", file=sys.stderr)
        return 2
    if not (migrations_dir / "env.py").is_file():
        print(f"migrations: no Alembic history at {migrations_dir}", file=sys.stderr)
        return 2
    ok = wait_for_head(url, service.schema, migrations_dir, args.timeout, args.interval,
                       say=lambda line: print(line, flush=True))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
