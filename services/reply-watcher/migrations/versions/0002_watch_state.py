"""What the reply watcher keeps: mailboxes (cursor and poll schedule), watched threads, the ids of
messages CoffeePing sent, and the outcome of every message it has looked at (ids and kinds only).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from alembic import op

from coffeeping.common.frozen_ddl import RLS_OWNER_OR_SYSTEM_V1, RLS_OWNER_V1, render

revision = "0002"
down_revision = "0001"

_OUTCOMES = "'reply', 'bounce', 'takeover', 'own', 'self', 'pending_sent', 'gone'"


def upgrade() -> None:
    # One row per user with active watches. It is also the poll schedule that every watcher process
    # claims from with FOR UPDATE SKIP LOCKED, hence the system-scope access.
    op.execute(
        """
        CREATE TABLE watcher.mailboxes (
            user_id text PRIMARY KEY,
            email text NOT NULL DEFAULT '',
            history_id numeric(20, 0) NULL,
            paused boolean NOT NULL DEFAULT false,
            due_at timestamptz NOT NULL DEFAULT now(),
            failures integer NOT NULL DEFAULT 0,
            last_polled_at timestamptz NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX mailboxes_due_idx ON watcher.mailboxes (due_at) WHERE NOT paused")
    op.execute("CREATE INDEX mailboxes_email_idx ON watcher.mailboxes (lower(email))")
    op.execute(
        """
        CREATE TABLE watcher.watches (
            user_id text NOT NULL,
            sequence_id text NOT NULL,
            contact_id text NOT NULL,
            contact_email text NOT NULL DEFAULT '',
            thread_id text NOT NULL,
            needs_recheck boolean NOT NULL DEFAULT false,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (user_id, sequence_id)
        )
        """
    )
    op.execute("CREATE INDEX watches_thread_idx ON watcher.watches (user_id, thread_id)")
    op.execute("CREATE INDEX watches_contact_idx ON watcher.watches (user_id, contact_id)")
    op.execute(
        """
        CREATE TABLE watcher.sent_messages (
            user_id text NOT NULL,
            message_id text NOT NULL,
            thread_id text NOT NULL,
            sequence_id text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (user_id, message_id)
        )
        """
    )
    op.execute(
        f"""
        CREATE TABLE watcher.seen_messages (
            user_id text NOT NULL,
            message_id text NOT NULL,
            thread_id text NOT NULL,
            outcome text NOT NULL CHECK (outcome IN ({_OUTCOMES})),
            contact_id text NULL,
            seen_at timestamptz NOT NULL DEFAULT now(),
            decided_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (user_id, message_id)
        )
        """
    )
    op.execute(
        "CREATE INDEX seen_messages_pending_idx ON watcher.seen_messages (user_id) WHERE outcome = 'pending_sent'"
    )
    for statement in render(RLS_OWNER_OR_SYSTEM_V1, schema="watcher", table="mailboxes"):
        op.execute(statement)
    for table in ("watches", "sent_messages", "seen_messages"):
        for statement in render(RLS_OWNER_V1, schema="watcher", table=table):
            op.execute(statement)


def downgrade() -> None:
    for table in ("seen_messages", "sent_messages", "watches", "mailboxes"):
        op.execute(f"DROP TABLE IF EXISTS watcher.{table}")
