"""Gmail push: each mailbox's watch (expiry, renewal, failures), the poll's claim and the pushes it has
not read yet, and the queue of watches to stop (docs/PUSH.md).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from alembic import op

from coffeeping.common.frozen_ddl import RLS_OWNER_OR_SYSTEM_V1, render

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    # watch_expires_at: when the Gmail watch we hold runs out (NULL: none); watch_due_at: when it must be
    # made or renewed (a new mailbox's at once); watch_failures / watch_error: the failed attempts since
    # the last success and the last reason (a short code). claimed_at: when a poll claimed the mailbox
    # (NULL: no poll in flight); pushed_at / pushed_history_id: the latest push and the highest history
    # id pushes named that no read has covered yet. ADD COLUMN with constant defaults rewrites nothing.
    op.execute(
        """
        ALTER TABLE watcher.mailboxes
            ADD COLUMN watch_expires_at timestamptz NULL,
            ADD COLUMN watch_due_at timestamptz NOT NULL DEFAULT now(),
            ADD COLUMN watch_failures integer NOT NULL DEFAULT 0,
            ADD COLUMN watch_error text NULL,
            ADD COLUMN claimed_at timestamptz NULL,
            ADD COLUMN pushed_at timestamptz NULL,
            ADD COLUMN pushed_history_id numeric(20, 0) NULL
        """
    )
    op.execute("CREATE INDEX mailboxes_watch_due_idx ON watcher.mailboxes (watch_due_at) WHERE NOT paused")
    # Watches to stop with users.stop, outside any transaction: the user id only (and the deletion to
    # report once the stop is done, when an account deletion queued it). A row goes when the stop is
    # done, or after a bounded number of attempts. Open to system scope: the watcher's loop claims from it.
    op.execute(
        """
        CREATE TABLE watcher.watch_stops (
            user_id text PRIMARY KEY,
            deletion_id text NULL,
            attempts integer NOT NULL DEFAULT 0,
            due_at timestamptz NOT NULL DEFAULT now(),
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX watch_stops_due_idx ON watcher.watch_stops (due_at)")
    for statement in render(RLS_OWNER_OR_SYSTEM_V1, schema="watcher", table="watch_stops"):
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS watcher.watch_stops")
    op.execute("DROP INDEX IF EXISTS watcher.mailboxes_watch_due_idx")
    op.execute(
        """
        ALTER TABLE watcher.mailboxes
            DROP COLUMN IF EXISTS pushed_history_id,
            DROP COLUMN IF EXISTS pushed_at,
            DROP COLUMN IF EXISTS claimed_at,
            DROP COLUMN IF EXISTS watch_error,
            DROP COLUMN IF EXISTS watch_failures,
            DROP COLUMN IF EXISTS watch_due_at,
            DROP COLUMN IF EXISTS watch_expires_at
        """
    )
