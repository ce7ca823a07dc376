"""Users and the messaging outbox/inbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE accounts.users (
            user_id text PRIMARY KEY,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # Frozen 2026-12-01: the SQL of coffeeping.common.db.rls_statements("accounts", "users").
    op.execute("ALTER TABLE accounts.users ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE accounts.users FORCE ROW LEVEL SECURITY")
    op.execute("DROP POLICY IF EXISTS users_owner ON accounts.users")
    op.execute(
        "CREATE POLICY users_owner ON accounts.users "
        "USING (user_id = current_setting('app.user_id', true)) "
        "WITH CHECK (user_id = current_setting('app.user_id', true))"
    )
    # Frozen 2026-12-01: the SQL of coffeeping.common.messaging.outbox_ddl("accounts").
    op.execute(
        """CREATE TABLE IF NOT EXISTS accounts.outbox (
            id uuid PRIMARY KEY,
            user_id text NOT NULL,
            routing_key text NOT NULL,
            body jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            published_at timestamptz NULL,
            attempts integer NOT NULL DEFAULT 0
        )"""
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS outbox_unpublished_idx ON accounts.outbox (created_at, id) "
        "WHERE published_at IS NULL"
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS outbox_published_idx ON accounts.outbox (published_at) "
        "WHERE published_at IS NOT NULL"
    )
    op.execute(
        """CREATE TABLE IF NOT EXISTS accounts.inbox (
            event_id uuid PRIMARY KEY,
            user_id text NOT NULL,
            processed_at timestamptz NOT NULL DEFAULT now()
        )"""
    )
    op.execute("CREATE INDEX IF NOT EXISTS inbox_processed_idx ON accounts.inbox (processed_at)")
    op.execute("ALTER TABLE accounts.outbox ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE accounts.outbox FORCE ROW LEVEL SECURITY")
    op.execute("DROP POLICY IF EXISTS outbox_owner ON accounts.outbox")
    op.execute(
        "CREATE POLICY outbox_owner ON accounts.outbox "
        "USING (user_id = current_setting('app.user_id', true) OR current_setting('app.scope', true) = 'system') "
        "WITH CHECK (user_id = current_setting('app.user_id', true) OR current_setting('app.scope', true) = 'system')"
    )
    op.execute("ALTER TABLE accounts.inbox ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE accounts.inbox FORCE ROW LEVEL SECURITY")
    op.execute("DROP POLICY IF EXISTS inbox_owner ON accounts.inbox")
    op.execute(
        "CREATE POLICY inbox_owner ON accounts.inbox "
        "USING (user_id = current_setting('app.user_id', true) OR current_setting('app.scope', true) = 'system') "
        "WITH CHECK (user_id = current_setting('app.user_id', true) OR current_setting('app.scope', true) = 'system')"
    )


def downgrade() -> None:
    # Frozen 2026-12-01: the SQL of coffeeping.common.messaging.outbox_drop_ddl("accounts").
    op.execute("DROP TABLE IF EXISTS accounts.inbox")
    op.execute("DROP TABLE IF EXISTS accounts.outbox")
    op.execute("DROP TABLE accounts.users")
