"""What the mailer stores (schema ``mailer``; DDL in ``migrations/``).

- ``contacts``: one per email address per user (``email_key`` is the lower-cased address).
- ``sequences``: a first email and its follow-ups to one contact, with its status and stop reason.
- ``steps``: each email of a sequence (position 0 is the first), the body as stored and as sent, its
  Gmail draft, message and thread ids and its delivery state.
- ``jobs``: the next due step of each running sequence; scanned across users by the scheduler, whose
  claimers take batches of rows with ``FOR UPDATE SKIP LOCKED`` and hold the locks while the steps are
  worked on.
- ``draft_deletions``: mirrored drafts still to remove from Gmail after a stop or a deletion.
- ``purges``: account purges whose rows are gone and whose Gmail drafts are still being removed.
- ``tombstones``, ``outbox``, ``inbox``: the deletion fence and the messaging tables.
- ``gmail_access``, ``forgotten_sequences``: the access log of every Gmail call made for a user
  (``coffeeping.common.access_log``).

Deleting a contact cascades to its sequences, steps and jobs.

The tables below are every table of the schema, as the migrations leave it
(``tests/integration/platform/test_models_match_migrations.py`` keeps the two equal); the service's queries
are built from these tables (SQLAlchemy Core), and check constraints and row-level-security policies
live in the migrations only.
"""

from collections.abc import Sequence

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    all_,
    any_,
    literal,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY

from coffeeping.common.access_log import access_tables
from coffeeping.common.tables import shared_tables

SCHEMA = "mailer"

# Sequence states. ``draft``: created, not sent; ``scheduled``: the first email is due;
# ``active``: the first email went out and follow-ups are pending; ``paused``; and the terminal ones.
SEQUENCE_LIVE = ("scheduled", "active")
SEQUENCE_TERMINAL = ("stopped", "completed")

# Step states (the public API shows these).
STEP_STATES = ("scheduled", "sending", "sent", "cancelled", "failed")

# Why a sequence stopped (``stop_reason``; the public API shows these). A completed sequence has none;
# its ``sequence.stopped`` event says "completed".
STOP_REASONS = ("replied", "bounced", "cancelled", "user_took_over", "draft_deleted", "gmail_disconnected",
                "gmail_account_changed", "thread_deleted", "contact_deleted", "failed")



def one_of(column: Column[str], states: Sequence[str]) -> ColumnElement[bool]:
    """``column IN states`` as ``column = ANY(:states)``, which PostgreSQL plans alike. A statement built
    once stays one SQL text: SQLAlchemy renders an ``IN`` list's values into the text at every execution."""
    return column == any_(literal(list(states), ARRAY(Text())))


def none_of(column: Column[str], states: Sequence[str]) -> ColumnElement[bool]:
    """``column NOT IN states``, as ``column <> ALL(:states)`` (see ``one_of``)."""
    return column != all_(literal(list(states), ARRAY(Text())))


metadata = MetaData(schema=SCHEMA)

_NOW = text("now()")

contacts = Table(
    "contacts",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("email", Text, nullable=False),
    Column("email_key", Text, nullable=False),
    Column("name", Text),
    Column("first_name", Text),
    Column("last_name", Text),
    Column("company", Text),
    Column("role", Text),
    Column("time_zone", Text),
    Column("notes", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    UniqueConstraint("user_id", "email_key", name="contacts_user_email_key"),
    Index("contacts_user_page_idx", "user_id", "created_at", "id"),
)

sequences = Table(
    "sequences",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("contact_id", Uuid, ForeignKey("mailer.contacts.id", ondelete="CASCADE"), nullable=False),
    Column("subject", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="draft"),
    Column("stop_reason", Text),
    Column("stopped_at", DateTime(timezone=True)),
    Column("pause_reason", Text),
    Column("business_days", Boolean, nullable=False, server_default=text("false")),
    Column("window_start", Text),
    Column("window_end", Text),
    Column("time_zone", Text, nullable=False, server_default="UTC"),
    Column("to_email", Text, nullable=False),
    Column("to_name", Text),
    Column("user_email", Text),
    Column("thread_id", Text),
    Column("history_id", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("started_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Index("sequences_user_page_idx", "user_id", "created_at", "id"),
    Index("sequences_contact_idx", "contact_id"),
)

steps = Table(
    "steps",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("sequence_id", Uuid, ForeignKey("mailer.sequences.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("body", Text, nullable=False),
    Column("sent_body", Text),
    Column("edited_in_gmail", Boolean, nullable=False, server_default=text("false")),
    Column("delay", Text),
    Column("send_at", DateTime(timezone=True)),
    Column("due_at", DateTime(timezone=True)),
    Column("status", Text, nullable=False, server_default="scheduled"),
    Column("cancel_reason", Text),
    Column("rfc_message_id", Text),
    Column("draft_id", Text),
    Column("draft_message_id", Text),
    Column("gmail_message_id", Text),
    Column("thread_id", Text),
    Column("sending_since", DateTime(timezone=True)),
    Column("sent_at", DateTime(timezone=True)),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    UniqueConstraint("sequence_id", "position", name="steps_sequence_position_key"),
    Index("steps_user_sent_idx", "user_id", "sent_at", postgresql_where=text("sent_at IS NOT NULL")),
)

jobs = Table(
    "jobs",
    metadata,
    Column("step_id", Uuid, primary_key=True),
    Column("sequence_id", Uuid, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Index("jobs_due_idx", "due_at"),
    Index("jobs_sequence_idx", "sequence_id"),
    Index("jobs_user_idx", "user_id"),
)

# A draft is named by its id, or (a crash between creating it and recording its id) by its thread and
# the Message-ID we gave it; ``give_up_at`` bounds the retries of an account purge.
draft_deletions = Table(
    "draft_deletions",
    metadata,
    Column("id", BigInteger, primary_key=True),  # bigserial
    Column("user_id", Text, nullable=False),
    Column("draft_id", Text),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("not_before", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("thread_id", Text),
    Column("rfc_message_id", Text),
    Column("give_up_at", DateTime(timezone=True)),
    # The sequence and step the draft belonged to (for the access log's entry of its deletion).
    Column("sequence_id", Uuid),
    Column("position", Integer),
    Index("draft_deletions_due_idx", "not_before"),
    Index("draft_deletions_user_idx", "user_id"),
)

purges = Table(
    "purges",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("deletion_id", Text, nullable=False),
    Column("drafts_total", Integer, nullable=False, server_default="0"),
    Column("drafts_left", Integer, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
)

outbox, inbox, tombstones = shared_tables(metadata)
# Every Gmail call made for a user (``coffeeping.common.access_log``), and the marks of deleted contacts'
# sequences.
gmail_access, forgotten_sequences = access_tables(metadata)
