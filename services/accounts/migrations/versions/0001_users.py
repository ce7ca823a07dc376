"""Users and the messaging outbox/inbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from alembic import op

from coffeeping.common.frozen_ddl import OUTBOX_INBOX_DROP_V1, OUTBOX_INBOX_V1, RLS_OWNER_V1, render

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE accounts.users (
            user_id text PRIMARY KEY,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    for statement in render(RLS_OWNER_V1, schema="accounts", table="users"):
        op.execute(statement)
    for statement in render(OUTBOX_INBOX_V1, schema="accounts"):
        op.execute(statement)


def downgrade() -> None:
    for statement in render(OUTBOX_INBOX_DROP_V1, schema="accounts"):
        op.execute(statement)
    op.execute("DROP TABLE accounts.users")
