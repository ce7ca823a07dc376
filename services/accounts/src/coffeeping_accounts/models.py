"""What the accounts service stores (schema ``accounts``; DDL in ``migrations/``)."""

from sqlalchemy import Column, DateTime, Integer, MetaData, Table, Text, Uuid

metadata = MetaData(schema="accounts")

users = Table(
    "users",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# One row per account deletion, keyed by a hash of the user id so that it can outlive the user's
# data without naming them; ``user_id`` is kept only while the deletion runs.
deletions = Table(
    "deletions",
    metadata,
    Column("deletion_id", Uuid, primary_key=True),
    Column("subject_hash", Text, nullable=False),
    Column("user_id", Text),
    Column("source", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("completed_at", DateTime(timezone=True)),
)

# One row per service taking part in a deletion (its step of the saga).
deletion_steps = Table(
    "deletion_steps",
    metadata,
    Column("deletion_id", Uuid, primary_key=True),
    Column("service", Text, primary_key=True),
    Column("subject_hash", Text, nullable=False),
    Column("step", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("error", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("position", Integer, nullable=False),
    Column("note", Text, nullable=False, server_default=""),
)

# Idempotency keys of deletion requests (the Svix message id of a webhook), stored hashed.
deletion_requests = Table(
    "deletion_requests",
    metadata,
    Column("key_hash", Text, primary_key=True),
    Column("subject_hash", Text, nullable=False),
    Column("deletion_id", Uuid, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
