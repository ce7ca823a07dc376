"""The deletion fence: tombstones, account purges that wait for a bounded draft cleanup, and draft
deletions that can find a draft whose id was never recorded.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from alembic import op

from coffeeping.common.frozen_ddl import TOMBSTONES_DROP_V1, TOMBSTONES_V1, render

revision = "0003"
down_revision = "0002"

_SYSTEM = "user_id = current_setting('app.user_id', true) OR current_setting('app.scope', true) = 'system'"


def upgrade() -> None:
    # Non-identifying marks of fenced and deleted accounts (HMAC-SHA256 of the user id under
    # TOMBSTONE_KEY): nothing is sent, drafted or written for a buried user. No user_id column, so no
    # row-level security.
    for statement in render(TOMBSTONES_V1, schema="mailer"):
        op.execute(statement)
    # An account purge whose rows are gone and whose Gmail drafts are still being removed; it reports
    # ``account.purged`` when the last draft is removed or given up.
    op.execute(
        """
        CREATE TABLE mailer.purges (
            user_id text PRIMARY KEY,
            deletion_id text NOT NULL,
            drafts_total integer NOT NULL DEFAULT 0,
            drafts_left integer NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("ALTER TABLE mailer.purges ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE mailer.purges FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY purges_owner ON mailer.purges USING ({_SYSTEM}) WITH CHECK ({_SYSTEM})")
    # A draft to delete is named by its id, or, when a crash came between creating it and recording its
    # id, by its thread and the Message-ID we gave it. ``give_up_at`` bounds the retries of a purge.
    op.execute("ALTER TABLE mailer.draft_deletions ALTER COLUMN draft_id DROP NOT NULL")
    op.execute("ALTER TABLE mailer.draft_deletions ADD COLUMN thread_id text NULL")
    op.execute("ALTER TABLE mailer.draft_deletions ADD COLUMN rfc_message_id text NULL")
    op.execute("ALTER TABLE mailer.draft_deletions ADD COLUMN give_up_at timestamptz NULL")
    op.execute("CREATE INDEX draft_deletions_user_idx ON mailer.draft_deletions (user_id)")


def downgrade() -> None:
    op.execute("DROP INDEX mailer.draft_deletions_user_idx")
    op.execute("DELETE FROM mailer.draft_deletions WHERE draft_id IS NULL")
    for column in ("give_up_at", "rfc_message_id", "thread_id"):
        op.execute(f"ALTER TABLE mailer.draft_deletions DROP COLUMN {column}")
    op.execute("ALTER TABLE mailer.draft_deletions ALTER COLUMN draft_id SET NOT NULL")
    op.execute("DROP TABLE mailer.purges")
    for statement in render(TOMBSTONES_DROP_V1, schema="mailer"):
        op.execute(statement)
