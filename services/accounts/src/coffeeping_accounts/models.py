"""What the accounts service stores (schema ``accounts``; DDL in ``migrations/``).

Every table of the schema, as the migrations leave it (``tests/integration/platform/test_models_match_migrations.py``
keeps the two equal). Check constraints and row-level-security policies live in the migrations only.
"""

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    Uuid,
    text,
)

from coffeeping.common.tables import shared_tables

metadata = MetaData(schema="accounts")

_NOW = text("now()")

users = Table(
    "users",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
)

# One row per account deletion, keyed by a hash of the user id so that it can outlive the user's
# data without naming them; ``user_id`` is kept only while the deletion runs.
# ``state``: in_progress, completed or failed (a completed deletion has no user_id).
deletions = Table(
    "deletions",
    metadata,
    Column("deletion_id", Uuid, primary_key=True),
    Column("subject_hash", Text, nullable=False),
    Column("user_id", Text),
    Column("source", Text, nullable=False),
    Column("state", Text, nullable=False, server_default="in_progress"),
    Column("requested_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("completed_at", DateTime(timezone=True)),
    Index("deletions_subject_idx", "subject_hash", text("requested_at DESC")),
    Index("deletions_one_running_idx", "subject_hash", unique=True,
          postgresql_where=text("state <> 'completed'")),
)

# One row per service taking part in a deletion (its step of the saga).
# ``state``: pending, running, done or failed.
deletion_steps = Table(
    "deletion_steps",
    metadata,
    Column("deletion_id", Uuid, ForeignKey("accounts.deletions.deletion_id", ondelete="CASCADE"),
           primary_key=True),
    Column("service", Text, primary_key=True),
    Column("subject_hash", Text, nullable=False),
    Column("step", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("error", Text, nullable=False, server_default=""),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("position", Integer, nullable=False),
    Column("note", Text, nullable=False, server_default=""),
    Index("deletion_steps_running_idx", "updated_at", postgresql_where=text("state = 'running'")),
)

# Idempotency keys of deletion requests (the Svix message id of a webhook), stored hashed.
deletion_requests = Table(
    "deletion_requests",
    metadata,
    Column("key_hash", Text, primary_key=True),
    Column("subject_hash", Text, nullable=False),
    Column("deletion_id", Uuid, ForeignKey("accounts.deletions.deletion_id", ondelete="CASCADE"),
           nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
)

outbox, inbox, tombstones = shared_tables(metadata)
