"""Tombstones of deleted accounts, and revocations that are retried until Google confirms them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from alembic import op

from coffeeping.common.frozen_ddl import TOMBSTONES_DROP_V1, TOMBSTONES_V1, render

revision = "0004"
down_revision = "0003"

_SYSTEM = "user_id = current_setting('app.user_id', true) OR current_setting('app.scope', true) = 'system'"


def upgrade() -> None:
    # Non-identifying marks of deleted accounts (HMAC-SHA256 of the user id under TOMBSTONE_KEY): every
    # consumer and write path refuses a buried user. No user_id column, so no row-level security.
    for statement in render(TOMBSTONES_V1, schema="vault"):
        op.execute(statement)
    # An account deletion's revocation, kept until Google confirms it; the grant is purged in the same
    # transaction that deletes this row, never before.
    op.execute(
        """
        CREATE TABLE vault.revocations (
            user_id text PRIMARY KEY,
            deletion_id text NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            not_before timestamptz NOT NULL DEFAULT now(),
            last_error text NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX revocations_due_idx ON vault.revocations (not_before)")
    op.execute("ALTER TABLE vault.revocations ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE vault.revocations FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY revocations_owner ON vault.revocations USING ({_SYSTEM}) WITH CHECK ({_SYSTEM})")


def downgrade() -> None:
    op.execute("DROP TABLE vault.revocations")
    for statement in render(TOMBSTONES_DROP_V1, schema="vault"):
        op.execute(statement)
