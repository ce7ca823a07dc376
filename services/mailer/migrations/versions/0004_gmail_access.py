"""The Gmail access log (every Gmail call made for a user), and what each queued draft deletion is about.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from alembic import op

from coffeeping.common.frozen_ddl import GMAIL_ACCESS_DROP_V1, GMAIL_ACCESS_V1, render

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    for statement in render(GMAIL_ACCESS_V1, schema="mailer"):
        op.execute(statement)
    # The sequence and step whose draft a queued deletion removes, so that the access log can say so
    # (NULL on rows queued before).
    op.execute("ALTER TABLE mailer.draft_deletions ADD COLUMN sequence_id uuid NULL")
    op.execute("ALTER TABLE mailer.draft_deletions ADD COLUMN position integer NULL")


def downgrade() -> None:
    op.execute("ALTER TABLE mailer.draft_deletions DROP COLUMN position")
    op.execute("ALTER TABLE mailer.draft_deletions DROP COLUMN sequence_id")
    for statement in render(GMAIL_ACCESS_DROP_V1, schema="mailer"):
        op.execute(statement)
