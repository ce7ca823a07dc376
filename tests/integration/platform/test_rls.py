"""Row-level security and role rules (SECURITY.md, "Row-level security"), on the migrated database."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text

from coffeeping.common.db import make_engine, system_tx, user_tx

SCHEMAS = ("accounts", "vault", "mailer", "watcher")


@pytest.fixture
def accounts_engine(database):
    engine = make_engine(database.app_url("accounts"), pool_size=1)
    yield engine
    engine.dispose()


def _seed(engine, *users: str) -> None:
    for user in users:
        with user_tx(engine, user) as conn:
            conn.execute(text("INSERT INTO accounts.users (user_id) VALUES (:u) ON CONFLICT DO NOTHING"), {"u": user})


def test_user_a_cannot_read_update_or_delete_user_b_rows(accounts_engine):
    _seed(accounts_engine, "user_rls_a", "user_rls_b")
    with user_tx(accounts_engine, "user_rls_a") as conn:
        seen = conn.execute(text("SELECT user_id FROM accounts.users")).scalars().all()
        assert seen == ["user_rls_a"]
        updated = conn.execute(text("UPDATE accounts.users SET created_at = now() WHERE user_id = 'user_rls_b'"))
        deleted = conn.execute(text("DELETE FROM accounts.users WHERE user_id = 'user_rls_b'"))
        assert updated.rowcount == 0
        assert deleted.rowcount == 0
    with user_tx(accounts_engine, "user_rls_b") as conn:
        assert conn.execute(text("SELECT count(*) FROM accounts.users")).scalar() == 1


def test_user_a_cannot_insert_a_row_for_user_b(accounts_engine):
    with pytest.raises(Exception) as caught, user_tx(accounts_engine, "user_rls_a") as conn:
        conn.execute(text("INSERT INTO accounts.users (user_id) VALUES ('user_rls_c')"))
    assert isinstance(caught.value.orig, psycopg.errors.InsufficientPrivilege)


def test_a_pooled_connection_used_for_a_user_then_without_one_sees_nothing(accounts_engine):
    _seed(accounts_engine, "user_rls_pool")
    with user_tx(accounts_engine, "user_rls_pool") as conn:
        assert conn.execute(text("SELECT count(*) FROM accounts.users")).scalar() == 1
    # The pool has one connection: this is the same one, with no user set.
    with accounts_engine.begin() as conn:
        assert conn.execute(text("SELECT current_setting('app.user_id', true)")).scalar() in ("", None)
        assert conn.execute(text("SELECT count(*) FROM accounts.users")).scalar() == 0


def test_system_scope_opens_infrastructure_tables_but_not_user_tables(accounts_engine):
    _seed(accounts_engine, "user_rls_sys")
    with system_tx(accounts_engine) as conn:
        assert conn.execute(text("SELECT count(*) FROM accounts.users")).scalar() == 0
        conn.execute(text("SELECT count(*) FROM accounts.outbox")).scalar()


def test_a_service_role_cannot_reach_another_service_schema(database):
    engine = make_engine(database.app_url("mailer"), pool_size=1)
    try:
        with pytest.raises(Exception) as caught, engine.begin() as conn:
            conn.execute(text("SELECT count(*) FROM accounts.users"))
        assert isinstance(caught.value.orig, psycopg.errors.InsufficientPrivilege)
    finally:
        engine.dispose()


def test_no_application_role_is_superuser_bypasses_rls_or_owns_its_tables(database):
    with psycopg.connect(database.admin_url) as conn:
        roles = conn.execute(
            "SELECT rolname, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles "
            "WHERE rolname LIKE 'cp\\_%'"
        ).fetchall()
        names = {r[0] for r in roles}
        for schema in SCHEMAS:
            assert f"cp_{schema}" in names and f"cp_{schema}_owner" in names
        for name, superuser, bypass, createrole, createdb in roles:
            assert not (superuser or bypass or createrole or createdb), name
        owned = conn.execute(
            "SELECT schemaname, tablename, tableowner FROM pg_tables WHERE schemaname = ANY(%s)", (list(SCHEMAS),)
        ).fetchall()
        assert owned
        for schema, table, owner in owned:
            assert owner == f"cp_{schema}_owner", (schema, table, owner)


def test_every_table_holding_user_data_forces_rls_with_using_and_with_check(database):
    with psycopg.connect(database.admin_url) as conn:
        tables = conn.execute(
            """
            SELECT n.nspname, c.relname, c.relrowsecurity, c.relforcerowsecurity
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%s)
              AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'user_id'
                          AND NOT a.attisdropped)
            """,
            (list(SCHEMAS),),
        ).fetchall()
        assert len(tables) >= 2 * len(SCHEMAS)  # at least the outbox and inbox of each
        for schema, table, enabled, forced in tables:
            assert enabled and forced, f"{schema}.{table} does not force row-level security"
            policies = conn.execute(
                "SELECT policyname, cmd, qual, with_check FROM pg_policies WHERE schemaname = %s AND tablename = %s",
                (schema, table),
            ).fetchall()
            assert policies, f"{schema}.{table} has no policy"
            # One policy binds every command to the user, in both directions.
            assert any(cmd == "ALL" and qual and "app.user_id" in qual and with_check and "app.user_id" in with_check
                       for _, cmd, qual, with_check in policies), f"{schema}.{table} lacks a user policy"
            # Any other policy opens rows to the user or to the system scope only, never to everyone.
            for name, cmd, qual, with_check in policies:
                for clause in (qual, with_check):
                    if clause is not None:
                        assert "app.user_id" in clause or "app.scope" in clause, f"{schema}.{table}.{name}"
                if cmd in ("ALL", "UPDATE"):
                    assert qual and with_check, f"{schema}.{table}.{name} lacks USING or WITH CHECK"


def test_user_tables_without_a_user_id_column_are_listed_and_justified(database):
    """Tables with no user_id must be infrastructure (versions) or keyed otherwise on purpose."""
    # Tombstones are keyed by an HMAC of the user id under a deployment secret: they name nobody, and
    # every scope must read them (the fence is checked outside any user's transaction too). The access
    # log's forgotten sequences are HMACs of deleted contacts' sequence ids, read by its cross-user writer.
    allowed = {"alembic_version", "tombstones", "forgotten_sequences"}
    with psycopg.connect(database.admin_url) as conn:
        rows = conn.execute(
            """
            SELECT n.nspname || '.' || c.relname, c.relname, c.relforcerowsecurity
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'r' AND n.nspname = ANY(%s)
              AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'user_id'
                              AND NOT a.attisdropped)
            """,
            (list(SCHEMAS),),
        ).fetchall()
    unexplained = [name for name, table, forced in rows if table not in allowed and not forced]
    assert not unexplained, f"tables without user_id and without forced RLS: {unexplained}"
