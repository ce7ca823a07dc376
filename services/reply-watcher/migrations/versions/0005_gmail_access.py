"""The Gmail access log: every Gmail call the watcher made for a user.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from alembic import op

from coffeeping.common.frozen_ddl import GMAIL_ACCESS_DROP_V1, GMAIL_ACCESS_V1, render

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    for statement in render(GMAIL_ACCESS_V1, schema="watcher"):
        op.execute(statement)


def downgrade() -> None:
    for statement in render(GMAIL_ACCESS_DROP_V1, schema="watcher"):
        op.execute(statement)
