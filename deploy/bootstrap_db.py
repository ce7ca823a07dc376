"""Create the database, the per-service schemas and roles, and run every service's migrations.

    python deploy/bootstrap_db.py [--database coffeeping] [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]

Idempotent: run it as often as you like. For each schema it makes two roles: ``cp_<schema>_owner``
owns the tables and runs the migrations; ``cp_<schema>`` is the service's login role with DML rights
only. Neither is a superuser nor has BYPASSRLS, and neither can reach another service's schema.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = {
    "accounts": ROOT / "services" / "accounts" / "migrations",
    "vault": ROOT / "services" / "token-vault" / "migrations",
    "mailer": ROOT / "services" / "mailer" / "migrations",
    "watcher": ROOT / "services" / "reply-watcher" / "migrations",
}
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def role_password(role: str) -> str:
    """Passwords come from ``PG_PASSWORD_<ROLE>``; the development default is only for local runs."""
    return os.environ.get(f"PG_PASSWORD_{role.upper()}", f"{role}-dev-password")


def role_url(admin_url: str, database: str, role: str) -> str:
    parts = urlsplit(admin_url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 5432
    netloc = f"{role}:{role_password(role)}@{host}:{port}"
    return urlunsplit(("postgresql+psycopg", netloc, f"/{database}", "", ""))


def _ensure_role(cur: psycopg.Cursor, role: str) -> None:
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
    verb = "ALTER" if cur.fetchone() else "CREATE"
    cur.execute(
        sql.SQL("{} ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD {}").format(
            sql.SQL(verb), sql.Identifier(role), sql.Literal(role_password(role))
        )
    )


def bootstrap(admin_url: str, database: str, migrate: bool = True) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if not cur.fetchone():
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        for schema in SCHEMAS:
            _ensure_role(cur, f"cp_{schema}_owner")
            _ensure_role(cur, f"cp_{schema}")
    db_url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{database}"))
    with psycopg.connect(db_url, autocommit=True) as conn, conn.cursor() as cur:
        db = sql.Identifier(database)
        cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
        cur.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        for schema in SCHEMAS:
            owner, app = sql.Identifier(f"cp_{schema}_owner"), sql.Identifier(f"cp_{schema}")
            name = sql.Identifier(schema)
            cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}, {}").format(db, owner, app))
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(name, owner))
            cur.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(name, owner))
            cur.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(name))
            cur.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(name, app))
            cur.execute(
                sql.SQL(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} "
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}"
                ).format(owner, name, app)
            )
            cur.execute(
                sql.SQL(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT USAGE, SELECT ON SEQUENCES TO {}"
                ).format(owner, name, app)
            )
            # Tables created before a grant change get it too.
            cur.execute(
                sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}").format(name, app)
            )
            cur.execute(sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(name, app))
    if migrate:
        from coffeeping.common.migrations import upgrade

        for schema, migrations_dir in SCHEMAS.items():
            if (migrations_dir / "env.py").exists():
                upgrade(migrations_dir, role_url(admin_url, database, f"cp_{schema}_owner"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admin-url", default=os.environ.get("ADMIN_DATABASE_URL", DEFAULT_ADMIN_URL))
    parser.add_argument("--database", default=os.environ.get("COFFEEPING_DB", "coffeeping"))
    parser.add_argument("--no-migrate", action="store_true")
    args = parser.parse_args()
    try:
        bootstrap(args.admin_url, args.database, migrate=not args.no_migrate)
    except psycopg.OperationalError as exc:
        print(f"bootstrap failed: cannot reach PostgreSQL ({exc.__class__.__name__})", file=sys.stderr)
        return 1
    print(f"database {args.database} ready: schemas {', '.join(SCHEMAS)} migrated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
