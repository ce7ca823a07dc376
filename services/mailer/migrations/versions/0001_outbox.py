"""The messaging outbox and inbox of the mailer.

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
    # Frozen 2026-12-01: the SQL of coffeeping.common.messaging.outbox_ddl("mailer").
    op.execute(
        """CREATE TABLE IF NOT EXISTS mailer.outbox (
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
        "CREATE INDEX IF NOT EXISTS outbox_unpublished_idx ON mailer.outbox (created_at, id) "
        "WHERE published_at IS NULL"
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS outbox_published_idx ON mailer.outbox (published_at) "
        "WHERE published_at IS NOT NULL"
    )
    op.execute(
        """CREATE TABLE IF NOT EXISTS mailer.inbox (
            event_id uuid PRIMARY KEY,
            user_id text NOT NULL,
            processed_at timestamptz NOT NULL DEFAULT now()
        )"""
    )
    op.execute("CREATE INDEX IF NOT EXISTS inbox_processed_idx ON mailer.inbox (processed_at)")
    op.execute("ALTER TABLE mailer.outbox ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE mailer.outbox FORCE ROW LEVEL SECURITY")
    op.execute("DROP POLICY IF EXISTS outbox_owner ON mailer.outbox")
    op.execute(
        "CREATE POLICY outbox_owner ON mailer.outbox "
        "USING (user_id = current_setting('app.user_id', true) OR current_setting('app.scope', true) = 'system') "
        "WITH CHECK (user_id = current_setting('app.user_id', true) OR current_setting('app.scope', true) = 'system')"
    )
    op.execute("ALTER TABLE mailer.inbox ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE mailer.inbox FORCE ROW LEVEL SECURITY")
    op.execute("DROP POLICY IF EXISTS inbox_owner ON mailer.inbox")
    op.execute(
        "CREATE POLICY inbox_owner ON mailer.inbox "
        "USING (user_id = current_setting('app.user_id', true) OR current_setting('app.scope', true) = 'system') "
        "WITH CHECK (user_id = current_setting('app.user_id', true) OR current_setting('app.scope', true) = 'system')"
    )


def downgrade() -> None:
    # Frozen 2026-12-01: the SQL of coffeeping.common.messaging.outbox_drop_ddl("mailer").
    op.execute("DROP TABLE IF EXISTS mailer.inbox")
    op.execute("DROP TABLE IF EXISTS mailer.outbox")
