"""The messaging outbox and inbox of the mailer.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from alembic import op

from coffeeping.common.messaging import outbox_ddl, outbox_drop_ddl

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in outbox_ddl("mailer"):
        op.execute(statement)


def downgrade() -> None:
    for statement in outbox_drop_ddl("mailer"):
        op.execute(statement)
