"""What the token vault stores (schema ``vault``; DDL in ``migrations/``).

Every table of the schema, as the migrations leave it (``tests/integration/platform/test_models_match_migrations.py``
keeps the two equal). Check constraints, row-level-security policies and the ``notify_grant_changed``
trigger live in the migrations only.
"""

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    Uuid,
    text,
)

from coffeeping.common.tables import shared_tables

metadata = MetaData(schema="vault")

_NOW = text("now()")

# One data key per grant, stored wrapped only: by Cloud KMS (``wrapping = 'kms'``, with the
# CryptoKeyVersion in ``kms_key_version``) or by the local development key (``'local'``).
data_keys = Table(
    "data_keys",
    metadata,
    Column("key_id", Uuid(as_uuid=False), primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("grant_id", Uuid(as_uuid=False), nullable=False),
    Column("wrapping", Text, nullable=False),
    Column("kms_key_version", Text),
    Column("wrapped", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("rewrapped_at", DateTime(timezone=True)),
    Index("data_keys_user_idx", "user_id"),
)

# One grant per user; ``status``: connected or needs_reconnect.
grants = Table(
    "grants",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("grant_id", Uuid(as_uuid=False), nullable=False, unique=True),
    Column("key_id", Uuid(as_uuid=False), ForeignKey("vault.data_keys.key_id"), nullable=False),
    Column("format_version", SmallInteger, nullable=False),
    Column("google_sub", Text),
    Column("email", Text, nullable=False),
    Column("scopes", ARRAY(Text), nullable=False),
    Column("status", Text, nullable=False),
    Column("refresh_ct", LargeBinary),
    Column("access_ct", LargeBinary),
    Column("access_expires_at", DateTime(timezone=True)),
    Column("connected_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("refreshed_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
)

scoped_tokens = Table(
    "scoped_tokens",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("grant_id", Uuid(as_uuid=False), ForeignKey("vault.grants.grant_id", ondelete="CASCADE"),
           nullable=False),
    Column("scope_key", Text, primary_key=True),
    Column("scopes", ARRAY(Text), nullable=False),
    Column("access_ct", LargeBinary, nullable=False),
    Column("access_expires_at", DateTime(timezone=True), nullable=False),
    Column("refreshed_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Index("scoped_tokens_grant_idx", "grant_id"),
)

audit = Table(
    "audit",
    metadata,
    Column("id", BigInteger, primary_key=True),  # bigserial
    Column("user_id", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("caller", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("detail", Text, nullable=False, server_default=""),
    # token_issued only: the token's scopes (short names) and expiry, as the access log shows them.
    Column("scopes", ARRAY(Text)),
    Column("expires_at", DateTime(timezone=True)),
    Index("audit_user_idx", "user_id", "at"),
)

state_nonces = Table(
    "state_nonces",
    metadata,
    Column("nonce_hash", Text, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Index("state_nonces_user_idx", "user_id", "expires_at"),
)


# An account deletion's revocation at Google, retried until Google confirms it (``revocations.py``).
revocations = Table(
    "revocations",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("deletion_id", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("not_before", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Index("revocations_due_idx", "not_before"),
)

outbox, inbox, tombstones = shared_tables(metadata)
