"""Scoped access tokens, grant-change notifications for the in-memory token caches, batched audit writes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from alembic import op

from coffeeping.common.frozen_ddl import RLS_OWNER_V1, render

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    # Access tokens for a subset of a grant's scopes (``scope_key``: the sorted scope URLs joined by
    # spaces), sealed like the grant's own token under its data key with the scope set in the
    # associated data. They go with their grant.
    op.execute(
        """
        CREATE TABLE vault.scoped_tokens (
            user_id text NOT NULL,
            grant_id uuid NOT NULL REFERENCES vault.grants (grant_id) ON DELETE CASCADE,
            scope_key text NOT NULL,
            scopes text[] NOT NULL,
            access_ct bytea NOT NULL,
            access_expires_at timestamptz NOT NULL,
            refreshed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (user_id, scope_key)
        )
        """
    )
    op.execute("CREATE INDEX scoped_tokens_grant_idx ON vault.scoped_tokens (grant_id)")
    for statement in render(RLS_OWNER_V1, schema="vault", table="scoped_tokens"):
        op.execute(statement)

    # Every vault process keeps decrypted access tokens in memory; any change to a grant or a scoped
    # token (refresh, needs_reconnect, revocation, purge, or an operator's UPDATE) tells them all to
    # drop that user's entries. NOTIFY is delivered after commit, in commit order.
    op.execute(
        """
        CREATE FUNCTION vault.notify_grant_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('vault_grant_changed', OLD.user_id);
            RETURN NULL;
        END
        $$
        """
    )
    for table in ("grants", "scoped_tokens"):
        op.execute(f"CREATE TRIGGER {table}_changed AFTER UPDATE OR DELETE ON vault.{table} "
                   "FOR EACH ROW EXECUTE FUNCTION vault.notify_grant_changed()")

    # The audit writer records token issues for many users in one statement (system scope). It may
    # add rows and check that a user still has an audit trail (a purged user has none), nothing else:
    # reading or changing a user's trail stays with that user's scope.
    op.execute("CREATE POLICY audit_system_insert ON vault.audit FOR INSERT "
               "WITH CHECK (current_setting('app.scope', true) = 'system')")
    op.execute("CREATE POLICY audit_system_read ON vault.audit FOR SELECT "
               "USING (current_setting('app.scope', true) = 'system')")


def downgrade() -> None:
    op.execute("DROP POLICY audit_system_read ON vault.audit")
    op.execute("DROP POLICY audit_system_insert ON vault.audit")
    op.execute("DROP TRIGGER scoped_tokens_changed ON vault.scoped_tokens")
    op.execute("DROP TRIGGER grants_changed ON vault.grants")
    op.execute("DROP FUNCTION vault.notify_grant_changed()")
    op.execute("DROP TABLE vault.scoped_tokens")
