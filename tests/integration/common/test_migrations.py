"""``python -m coffeeping.common.migrations wait``, the backends' init container, against the real
PostgreSQL and with a service's own login (as in a pod): it waits while the schema is behind the head the
image's history expects and gives up non-zero with a one-line reason, exits 0 at the head (or past it),
and returns as soon as a migration running meanwhile reaches the head."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from bootstrap_db import SCHEMAS, bootstrap, role_url
from psycopg import sql

from coffeeping.common.migrations import upgrade

ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Unmigrated:
    """A database with the roles, schemas and grants of deploy/bootstrap_db.py but no migration run yet."""

    admin_url: str
    name: str

    def app_url(self, schema: str) -> str:
        # What a pod's DATABASE_URL holds: the service's login, a plain postgresql:// URL.
        return role_url(self.admin_url, self.name, f"cp_{schema}", dev=True).replace("+psycopg", "", 1)

    def migrate(self, schema: str, revision: str = "head") -> None:
        upgrade(SCHEMAS[schema], role_url(self.admin_url, self.name, f"cp_{schema}_owner", dev=True), revision)


@pytest.fixture
def unmigrated(pg_admin_url: str) -> Iterator[Unmigrated]:
    name = f"cp_wait_{uuid.uuid4().hex[:10]}"
    bootstrap(pg_admin_url, name, migrate=False, dev=True)
    try:
        yield Unmigrated(pg_admin_url, name)
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def wait_command(service: str, timeout: float, interval: float = 0.2) -> list[str]:
    return [sys.executable, "-m", "coffeeping.common.migrations", "wait", service, "--root", str(ROOT),
            "--timeout", str(timeout), "--interval", str(interval)]


def run_wait(service: str, url: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(wait_command(service, timeout), env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)


def latest(schema: str) -> tuple[str, str]:
    """The head revision of ``schema``'s history and the one before it."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(SCHEMAS[schema]))
    (head,) = ScriptDirectory.from_config(config).get_heads()
    previous = ScriptDirectory.from_config(config).get_revision(head).down_revision
    assert isinstance(previous, str)
    return head, previous


def test_an_unmigrated_schema_makes_the_wait_give_up_non_zero_saying_so(unmigrated):
    head, _ = latest("mailer")
    started = time.monotonic()
    done = run_wait("mailer", unmigrated.app_url("mailer"), timeout=1.5)
    assert done.returncode == 1, done
    assert time.monotonic() - started >= 1.5  # it waited for the whole timeout
    lines = done.stdout.strip().splitlines()
    assert lines[0] == (f"migrations: waiting: schema mailer is not migrated yet (no mailer.alembic_version); "
                        f"this image expects {head}")
    assert lines[-1].startswith("migrations: gave up after 1.5s: schema mailer is not migrated yet")
    # The reason did not change, so it was said once (plus the final line), not once per check.
    assert len(lines) == 2


def test_a_schema_one_revision_behind_makes_the_wait_time_out_naming_both_revisions(unmigrated):
    head, previous = latest("mailer")
    unmigrated.migrate("mailer", previous)
    done = run_wait("mailer", unmigrated.app_url("mailer"), timeout=1.0)
    assert done.returncode == 1, done
    assert f"schema mailer is at {previous}; this image expects {head}" in done.stdout.splitlines()[-1]


@pytest.mark.parametrize("service,schema", [("accounts", "accounts"), ("token-vault", "vault"),
                                            ("mailer", "mailer"), ("reply-watcher", "watcher")])
def test_each_service_s_own_login_reads_its_version_and_passes_at_the_head(unmigrated, service, schema):
    head, _ = latest(schema)
    unmigrated.migrate(schema)
    done = run_wait(service, unmigrated.app_url(schema), timeout=5)
    assert done.returncode == 0, done
    assert done.stdout.strip() == f"migrations: schema {schema} is at {head}, the head this image expects"


def test_the_wait_returns_as_soon_as_the_migration_job_reaches_the_head(unmigrated):
    _, previous = latest("mailer")
    unmigrated.migrate("mailer", previous)
    waiting = subprocess.Popen(wait_command("mailer", timeout=30), env={"DATABASE_URL": unmigrated.app_url("mailer"),
                                                                       "PATH": "/usr/bin:/bin"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        assert waiting.poll() is None  # still waiting while behind
        unmigrated.migrate("mailer")
        out, _ = waiting.communicate(timeout=20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            waiting.kill()
    assert waiting.returncode == 0, out
    assert out.strip().splitlines()[-1].endswith("the head this image expects")


def test_a_schema_migrated_by_a_later_release_lets_the_previous_image_start(unmigrated):
    unmigrated.migrate("mailer")
    with psycopg.connect(f"{unmigrated.admin_url.rsplit('/', 1)[0]}/{unmigrated.name}", autocommit=True) as conn:
        conn.execute("UPDATE mailer.alembic_version SET version_num = '9999'")
    done = run_wait("mailer", unmigrated.app_url("mailer"), timeout=1)
    assert done.returncode == 0, done
    assert "newer than this image's head" in done.stdout


def test_an_unreachable_database_is_waited_for_and_reported_in_one_line(unmigrated):
    url = unmigrated.app_url("mailer").rsplit("/", 1)[0] + "/no_such_database"
    done = run_wait("mailer", url, timeout=0.5)
    assert done.returncode == 1
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("migrations: gave up after 0.5s: cannot read mailer.alembic_version: OperationalError")
    assert "no_such_database" in last and "dev-password" not in done.stdout


def test_the_wait_refuses_to_start_without_the_service_s_login():
    done = subprocess.run(wait_command("mailer", timeout=1), env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "migrations: DATABASE_URL is required but not set (the service's own login)"
