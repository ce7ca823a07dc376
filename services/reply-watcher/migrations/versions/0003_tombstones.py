"""Tombstones of deleted accounts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from alembic import op

from coffeeping.common.frozen_ddl import TOMBSTONES_DROP_V1, TOMBSTONES_V1, render

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    # Non-identifying marks of deleted accounts (HMAC-SHA256 of the user id under TOMBSTONE_KEY): every
    # consumer and write path refuses a buried user. No user_id column, so no row-level security.
    for statement in render(TOMBSTONES_V1, schema="watcher"):
        op.execute(statement)


def downgrade() -> None:
    for statement in render(TOMBSTONES_DROP_V1, schema="watcher"):
        op.execute(statement)
