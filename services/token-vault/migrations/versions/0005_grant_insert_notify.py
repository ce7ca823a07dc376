"""A new grant notifies the vault processes too, so none keeps serving a "not connected" view from memory.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION vault.notify_grant_added() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('vault_grant_changed', NEW.user_id);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute("CREATE TRIGGER grants_added AFTER INSERT ON vault.grants "
               "FOR EACH ROW EXECUTE FUNCTION vault.notify_grant_added()")


def downgrade() -> None:
    op.execute("DROP TRIGGER grants_added ON vault.grants")
    op.execute("DROP FUNCTION vault.notify_grant_added()")
