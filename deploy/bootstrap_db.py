"""Create the database, the per-service schemas and roles, and run every service's migrations.

    python deploy/bootstrap_db.py [--dev] [--database coffeeping] \
        [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]
    python deploy/bootstrap_db.py --dev --dev-state /var/lib/coffeeping      # docker-compose's bootstrap only

Idempotent: run it as often as you like. For each schema it makes two roles: ``cp_<schema>_owner``
owns the tables and runs the migrations; ``cp_<schema>`` is the service's login role with DML rights
only. Neither is a superuser nor has BYPASSRLS, and neither can reach another service's schema.

Every role's password is required, from ``PG_PASSWORD_<ROLE>`` (``PG_PASSWORD_CP_ACCOUNTS``,
``PG_PASSWORD_CP_ACCOUNTS_OWNER``, ... for the schemas accounts, vault, mailer and watcher): a missing
one stops the bootstrap before it changes anything, with one line that names the variable. Only
``--dev`` (``dev=True`` from Python: the local stack and the tests) falls back to the development
password ``<role>-dev-password``.

``--dev-state DIR`` (with ``--dev``) prepares docker-compose's development system in the shared volume
``DIR``: the dev CA and certificates, the generated secrets and every database and broker password
(``DIR/dev-secrets.env``, generated once), and one folder per container, ``DIR/<container>/``, holding
only that container's certificate, key, the CA certificate (never the CA key) and a ``secrets.env``
with only its own secrets, ``DATABASE_URL`` and ``RABBITMQ_URL``. Each container mounts its own
folder alone (``volume: {subpath: <container>}``); the database is then bootstrapped with those
passwords.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from coffeeping.common import services

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = {s.schema: ROOT / s.folder / "migrations" for s in services.BACKENDS if s.schema}
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


class MissingPasswordError(RuntimeError):
    """Role passwords that are required but not set; the message names their variables, never a value."""


def roles() -> list[str]:
    return [role for schema in SCHEMAS for role in (f"cp_{schema}_owner", f"cp_{schema}")]


def password_variable(role: str) -> str:
    return f"PG_PASSWORD_{role.upper()}"


def _missing(missing: list[str]) -> MissingPasswordError:
    names = ", ".join(password_variable(role) for role in missing)
    verb = "is" if len(missing) == 1 else "are"
    return MissingPasswordError(f"{names} {verb} not set (every database role needs its own password; "
                                "only a development run may use --dev)")


def role_password(role: str, *, dev: bool = False) -> str:
    """``PG_PASSWORD_<ROLE>``; without it, ``<role>-dev-password`` if ``dev``, else an error."""
    value = os.environ.get(password_variable(role), "")
    if value:
        return value
    if dev:
        return f"{role}-dev-password"
    raise _missing([role])


def role_passwords(*, dev: bool = False) -> dict[str, str]:
    """Every role's password, or one error naming every missing variable."""
    missing = [role for role in roles() if not os.environ.get(password_variable(role))]
    if missing and not dev:
        raise _missing(missing)
    return {role: role_password(role, dev=dev) for role in roles()}


def _url(admin_url: str, database: str, role: str, password: str) -> str:
    parts = urlsplit(admin_url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 5432
    netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@{host}:{port}"
    return urlunsplit(("postgresql+psycopg", netloc, f"/{database}", "", ""))


def role_url(admin_url: str, database: str, role: str, *, dev: bool = False) -> str:
    """The URL of ``role`` on ``database``, on the server of ``admin_url``."""
    return _url(admin_url, database, role, role_password(role, dev=dev))


def _ensure_role(cur: psycopg.Cursor, role: str, password: str) -> None:
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
    verb = "ALTER" if cur.fetchone() else "CREATE"
    cur.execute(
        sql.SQL("{} ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD {}").format(
            sql.SQL(verb), sql.Identifier(role), sql.Literal(password)
        )
    )


def bootstrap(admin_url: str, database: str, migrate: bool = True, *, dev: bool = False) -> None:
    """Roles, schemas, grants and migrations. Every ``PG_PASSWORD_<ROLE>`` is required unless ``dev``
    (the local stack and the tests), checked before anything is changed."""
    passwords = role_passwords(dev=dev)
    with psycopg.connect(admin_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if not cur.fetchone():
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        for schema in SCHEMAS:
            for role in (f"cp_{schema}_owner", f"cp_{schema}"):
                _ensure_role(cur, role, passwords[role])
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
                owner = f"cp_{schema}_owner"
                upgrade(migrations_dir, _url(admin_url, database, owner, passwords[owner]))


# docker-compose's development state (--dev-state) ------------------------------------------------

# What each container of docker-compose.yml may read, and nothing more: a compromised service must hold
# no other service's secret and no CA key (../shared/design/SECURITY.md). The backends also get their
# own DATABASE_URL and RABBITMQ_URL, with the two passwords these are built from.
CONTAINER_SECRETS: dict[str, tuple[str, ...]] = {
    "auth-gateway": ("OAUTH_STATE_SECRET", "CLERK_WEBHOOK_SECRET"),
    "token-vault": ("TOKEN_VAULT_LOCAL_KEY", "GOOGLE_CLIENT_SECRET", "TOMBSTONE_KEY"),
    "mailer": ("TOMBSTONE_KEY",),
    "reply-watcher": ("TOMBSTONE_KEY",),
    "accounts": ("TOMBSTONE_KEY",),
    # The sandbox registers the OAuth client the vault authenticates as.
    "sandbox": ("GOOGLE_CLIENT_SECRET",),
}
# The backends and their schema: database login cp_<schema>, broker login <prefix>-<container>.
BACKEND_SCHEMAS = {s.name: s.schema for s in services.BACKENDS if s.schema}
# The containers that speak gRPC with mutual TLS (the sandbox does not).
MTLS_CONTAINERS = tuple(s.name for s in services.ALL)


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            if key:
                values[key] = value
    return values


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically, with ``mode`` from its creation on."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def dev_passwords(path: Path) -> dict[str, str]:
    """The development secrets file ``path``, with a random password added for every database role and
    every broker login (deploy/bootstrap_broker.py ``LOGINS``) that it does not hold yet (kept from then on)."""
    from bootstrap_broker import LOGINS
    from bootstrap_broker import password_variable as broker_variable

    values = read_env_file(path)
    wanted = [password_variable(role) for role in roles()] + [broker_variable(login) for login in LOGINS]
    added = {name: secrets.token_urlsafe(24) for name in wanted if not values.get(name)}
    if added:
        values.update(added)
        _write_file(path, "".join(f"{key}={value}\n" for key, value in values.items()).encode(), 0o600)
    return values


def container_env(container: str, values: Mapping[str, str], admin_url: str, database: str, amqp_url: str,
                  vhost: str, prefix: str) -> dict[str, str]:
    """The ``secrets.env`` of one container: its own secrets, and for a backend its own URLs."""
    from bootstrap_broker import password_variable as broker_variable
    from bootstrap_broker import service_url

    env = {name: values[name] for name in CONTAINER_SECRETS[container]}
    schema = BACKEND_SCHEMAS.get(container)
    if schema:
        role_variable, broker = password_variable(f"cp_{schema}"), broker_variable(container)
        env[role_variable] = values[role_variable]
        env[broker] = values[broker]
        env["DATABASE_URL"] = _url(admin_url, database, f"cp_{schema}", values[role_variable])
        env["RABBITMQ_URL"] = service_url(amqp_url, vhost, prefix, container, values[broker])
    return env


def write_dev_state(state_dir: Path, admin_url: str, database: str, amqp_url: str, vhost: str,
                    prefix: str) -> dict[str, str]:
    """docker-compose only: the dev CA and certificates (``certs/``), every generated secret and password
    (``dev-secrets.env``), and per container ``<container>/`` with only its own files: ``ca.crt``,
    ``tls.crt``, ``tls.key`` (the mTLS containers) and ``secrets.env`` (sourced by its entrypoint).
    Returns every generated value."""
    from stack import dev_secrets

    from coffeeping.common.certs import ensure

    certs = ensure(state_dir / "certs")
    secrets_file = state_dir / "dev-secrets.env"
    dev_secrets(secrets_file)
    values = dev_passwords(secrets_file)
    for container in CONTAINER_SECRETS:
        env = container_env(container, values, admin_url, database, amqp_url, vhost, prefix)
        files = {"secrets.env": ("".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()).encode(), 0o600)}
        if container in MTLS_CONTAINERS:
            files["ca.crt"] = ((certs / "ca.pem").read_bytes(), 0o644)
            files["tls.crt"] = ((certs / f"{container}.pem").read_bytes(), 0o644)
            files["tls.key"] = ((certs / f"{container}-key.pem").read_bytes(), 0o600)
        folder = state_dir / container
        folder.mkdir(mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)
        for stale in folder.iterdir():
            if stale.name not in files and not stale.is_dir():
                stale.unlink()
        for name, (data, mode) in files.items():
            _write_file(folder / name, data, mode)
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admin-url", default=os.environ.get("ADMIN_DATABASE_URL", DEFAULT_ADMIN_URL))
    parser.add_argument("--database", default=os.environ.get("COFFEEPING_DB", "coffeeping"))
    parser.add_argument("--no-migrate", action="store_true")
    parser.add_argument("--dev", action="store_true",
                        help="development only: a role without PG_PASSWORD_<ROLE> gets <role>-dev-password")
    parser.add_argument("--dev-state", type=Path, metavar="DIR",
                        help="docker-compose only (with --dev): generate certificates, secrets and passwords into "
                             "DIR and one folder per container; the broker URLs use RABBITMQ_URL's host and port, "
                             "RABBITMQ_VHOST and MESSAGING_PREFIX")
    args = parser.parse_args(argv)
    if args.dev_state and not args.dev:
        parser.error("--dev-state prepares a development system: add --dev")
    try:
        if args.dev_state:
            values = write_dev_state(args.dev_state, args.admin_url, args.database,
                                     os.environ.get("RABBITMQ_URL", "amqp://127.0.0.1:5672"),
                                     os.environ.get("RABBITMQ_VHOST", "coffeeping"),
                                     os.environ.get("MESSAGING_PREFIX", "coffeeping"))
            # The roles get the passwords the containers' DATABASE_URLs were just built from.
            os.environ.update({password_variable(role): values[password_variable(role)] for role in roles()})
        bootstrap(args.admin_url, args.database, migrate=not args.no_migrate, dev=args.dev)
    except MissingPasswordError as exc:
        print(f"bootstrap failed: {exc}", file=sys.stderr)
        return 2
    except psycopg.OperationalError as exc:
        print(f"bootstrap failed: cannot reach PostgreSQL ({exc.__class__.__name__})", file=sys.stderr)
        return 1
    print(f"database {args.database} ready: schemas {', '.join(SCHEMAS)} migrated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
