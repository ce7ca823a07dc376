"""Encrypted grants, wrapped data keys, the audit trail and used OAuth state nonces.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One data key per grant. Only its wrapped form is stored: by Cloud KMS (``wrapping = 'kms'``, the
    # CryptoKeyVersion that wrapped it in ``kms_key_version``) or by the local development key.
    op.execute(
        """
        CREATE TABLE vault.data_keys (
            key_id uuid PRIMARY KEY,
            user_id text NOT NULL,
            grant_id uuid NOT NULL,
            wrapping text NOT NULL CHECK (wrapping IN ('kms', 'local')),
            kms_key_version text NULL,
            wrapped bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            rewrapped_at timestamptz NULL
        )
        """
    )
    op.execute("CREATE INDEX data_keys_user_idx ON vault.data_keys (user_id)")
    # The re-wrap job walks every data key across users; a wrapped key is useless without KMS.
    # Frozen 2026-12-01: the SQL of coffeeping.common.db.rls_statements("vault", "data_keys", system_access=True).
    op.execute("ALTER TABLE vault.data_keys ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE vault.data_keys FORCE ROW LEVEL SECURITY")
    op.execute("DROP POLICY IF EXISTS data_keys_owner ON vault.data_keys")
    op.execute(
        "CREATE POLICY data_keys_owner ON vault.data_keys "
        "USING (user_id = current_setting('app.user_id', true) OR current_setting('app.scope', true) = 'system') "
        "WITH CHECK (user_id = current_setting('app.user_id', true) OR current_setting('app.scope', true) = 'system')"
    )

    # One grant per user. Tokens are AES-256-GCM ciphertexts under the grant's data key, bound by
    # associated data to (user, grant, field, format version).
    op.execute(
        """
        CREATE TABLE vault.grants (
            user_id text PRIMARY KEY,
            grant_id uuid NOT NULL UNIQUE,
            key_id uuid NOT NULL REFERENCES vault.data_keys (key_id),
            format_version smallint NOT NULL,
            google_sub text NULL,
            email text NOT NULL,
            scopes text[] NOT NULL,
            status text NOT NULL CHECK (status IN ('connected', 'needs_reconnect')),
            refresh_ct bytea NULL,
            access_ct bytea NULL,
            access_expires_at timestamptz NULL,
            connected_at timestamptz NOT NULL DEFAULT now(),
            refreshed_at timestamptz NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # Frozen 2026-12-01: the SQL of coffeeping.common.db.rls_statements("vault", "grants").
    op.execute("ALTER TABLE vault.grants ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE vault.grants FORCE ROW LEVEL SECURITY")
    op.execute("DROP POLICY IF EXISTS grants_owner ON vault.grants")
    op.execute(
        "CREATE POLICY grants_owner ON vault.grants "
        "USING (user_id = current_setting('app.user_id', true)) "
        "WITH CHECK (user_id = current_setting('app.user_id', true))"
    )

    # Who did what, when, with what outcome; never a token.
    op.execute(
        """
        CREATE TABLE vault.audit (
            id bigserial PRIMARY KEY,
            user_id text NOT NULL,
            at timestamptz NOT NULL DEFAULT now(),
            caller text NOT NULL,
            action text NOT NULL,
            outcome text NOT NULL,
            detail text NOT NULL DEFAULT ''
        )
        """
    )
    op.execute("CREATE INDEX audit_user_idx ON vault.audit (user_id, at)")
    # Frozen 2026-12-01: the SQL of coffeeping.common.db.rls_statements("vault", "audit").
    op.execute("ALTER TABLE vault.audit ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE vault.audit FORCE ROW LEVEL SECURITY")
    op.execute("DROP POLICY IF EXISTS audit_owner ON vault.audit")
    op.execute(
        "CREATE POLICY audit_owner ON vault.audit "
        "USING (user_id = current_setting('app.user_id', true)) "
        "WITH CHECK (user_id = current_setting('app.user_id', true))"
    )

    # OAuth state nonces already used at the gateway (single use across workers and processes).
    op.execute(
        """
        CREATE TABLE vault.state_nonces (
            nonce_hash text PRIMARY KEY,
            user_id text NOT NULL,
            expires_at timestamptz NOT NULL,
            used_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX state_nonces_user_idx ON vault.state_nonces (user_id, expires_at)")
    # Frozen 2026-12-01: the SQL of coffeeping.common.db.rls_statements("vault", "state_nonces").
    op.execute("ALTER TABLE vault.state_nonces ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE vault.state_nonces FORCE ROW LEVEL SECURITY")
    op.execute("DROP POLICY IF EXISTS state_nonces_owner ON vault.state_nonces")
    op.execute(
        "CREATE POLICY state_nonces_owner ON vault.state_nonces "
        "USING (user_id = current_setting('app.user_id', true)) "
        "WITH CHECK (user_id = current_setting('app.user_id', true))"
    )


def downgrade() -> None:
    op.execute("DROP TABLE vault.state_nonces")
    op.execute("DROP TABLE vault.audit")
    op.execute("DROP TABLE vault.grants")
    op.execute("DROP TABLE vault.data_keys")
