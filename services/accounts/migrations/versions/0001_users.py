"""Users and the messaging outbox/inbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from alembic import op

from coffeeping.common.db import rls_statements
from coffeeping.common.messaging import outbox_ddl, outbox_drop_ddl

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
    for statement in rls_statements("accounts", "users"):
        op.execute(statement)
    for statement in outbox_ddl("accounts"):
        op.execute(statement)


def downgrade() -> None:
    for statement in outbox_drop_ddl("accounts"):
        op.execute(statement)
    op.execute("DROP TABLE accounts.users")
