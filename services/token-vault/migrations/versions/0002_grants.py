"""Encrypted grants, wrapped data keys, the audit trail and used OAuth state nonces.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from alembic import op

from coffeeping.common.frozen_ddl import RLS_OWNER_OR_SYSTEM_V1, RLS_OWNER_V1, render

revision = "0002"
down_revision = "0001"


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
    for statement in render(RLS_OWNER_OR_SYSTEM_V1, schema="vault", table="data_keys"):
        op.execute(statement)

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
    for statement in render(RLS_OWNER_V1, schema="vault", table="grants"):
        op.execute(statement)

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
    for statement in render(RLS_OWNER_V1, schema="vault", table="audit"):
        op.execute(statement)

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
    for statement in render(RLS_OWNER_V1, schema="vault", table="state_nonces"):
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE vault.state_nonces")
    op.execute("DROP TABLE vault.audit")
    op.execute("DROP TABLE vault.grants")
    op.execute("DROP TABLE vault.data_keys")
