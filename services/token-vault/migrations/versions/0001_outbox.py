"""The messaging outbox and inbox of the token-vault.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from alembic import op

from coffeeping.common.frozen_ddl import OUTBOX_INBOX_DROP_V1, OUTBOX_INBOX_V1, render

revision = "0001"
down_revision = None


def upgrade() -> None:
    for statement in render(OUTBOX_INBOX_V1, schema="vault"):
        op.execute(statement)


def downgrade() -> None:
    for statement in render(OUTBOX_INBOX_DROP_V1, schema="vault"):
        op.execute(statement)
