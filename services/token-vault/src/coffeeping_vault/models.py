"""What the token vault stores (schema ``vault``; DDL in ``migrations/``)."""

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    Uuid,
)

metadata = MetaData(schema="vault")

data_keys = Table(
    "data_keys",
    metadata,
    Column("key_id", Uuid(as_uuid=False), primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("grant_id", Uuid(as_uuid=False), nullable=False),
    Column("wrapping", Text, nullable=False),
    Column("kms_key_version", Text),
    Column("wrapped", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True)),
    Column("rewrapped_at", DateTime(timezone=True)),
)

grants = Table(
    "grants",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("grant_id", Uuid(as_uuid=False), nullable=False),
    Column("key_id", Uuid(as_uuid=False), ForeignKey("vault.data_keys.key_id"), nullable=False),
    Column("format_version", SmallInteger, nullable=False),
    Column("google_sub", Text),
    Column("email", Text, nullable=False),
    Column("scopes", ARRAY(Text), nullable=False),
    Column("status", Text, nullable=False),
    Column("refresh_ct", LargeBinary),
    Column("access_ct", LargeBinary),
    Column("access_expires_at", DateTime(timezone=True)),
    Column("connected_at", DateTime(timezone=True)),
    Column("refreshed_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True)),
)

scoped_tokens = Table(
    "scoped_tokens",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("grant_id", Uuid(as_uuid=False), ForeignKey("vault.grants.grant_id"), nullable=False),
    Column("scope_key", Text, primary_key=True),
    Column("scopes", ARRAY(Text), nullable=False),
    Column("access_ct", LargeBinary, nullable=False),
    Column("access_expires_at", DateTime(timezone=True), nullable=False),
    Column("refreshed_at", DateTime(timezone=True)),
)

audit = Table(
    "audit",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("at", DateTime(timezone=True)),
    Column("caller", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("detail", Text, nullable=False),
)

state_nonces = Table(
    "state_nonces",
    metadata,
    Column("nonce_hash", Text, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True)),
)

# Non-identifying marks of deleted accounts (HMAC-SHA256 of the user id, ``coffeeping.common.tombstones``).
tombstones = Table(
    "tombstones",
    metadata,
    Column("subject", LargeBinary, primary_key=True),
    Column("buried_at", DateTime(timezone=True)),
)

# An account deletion's revocation at Google, retried until Google confirms it (``revocations.py``).
revocations = Table(
    "revocations",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("deletion_id", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("not_before", DateTime(timezone=True), nullable=False),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True)),
)
