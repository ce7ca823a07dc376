"""Token issues record their scopes and expiry (the access log shows them), and expire with the log.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    # Short scope names (``gmail.send``) and the token's expiry, on ``token_issued`` rows; NULL on the
    # rows written before and on every other action.
    op.execute("ALTER TABLE vault.audit ADD COLUMN scopes text[] NULL")
    op.execute("ALTER TABLE vault.audit ADD COLUMN expires_at timestamptz NULL")
    # The retention sweep (``ACCESS_LOG_RETENTION_DAYS``) deletes old token issues and refreshes across
    # users in system scope; every other record of a trail stays with that user's scope.
    op.execute("CREATE POLICY audit_system_expire ON vault.audit FOR DELETE "
               "USING (current_setting('app.scope', true) = 'system' "
               "AND action IN ('token_issued', 'token_refreshed'))")


def downgrade() -> None:
    op.execute("DROP POLICY audit_system_expire ON vault.audit")
    op.execute("ALTER TABLE vault.audit DROP COLUMN expires_at")
    op.execute("ALTER TABLE vault.audit DROP COLUMN scopes")
