"""What the reply watcher stores (schema ``watcher``; DDL in ``migrations/``).

Never a subject, a body or any header value of a received message: only Gmail ids, the kind of a
detection and times. The user's own Gmail address and the contact's address come from our own events.

Every table of the schema, as the migrations leave it (``tests/integration/platform/test_models_match_migrations.py``
keeps the two equal). Check constraints and row-level-security policies live in the migrations only.
"""

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    Numeric,
    Table,
    Text,
    func,
    text,
)

from coffeeping.common.access_log import access_tables
from coffeeping.common.tables import shared_tables

metadata = MetaData(schema="watcher")

_NOW = text("now()")

# One row per user with active watches: the history cursor and the poll schedule (system scope).
mailboxes = Table(
    "mailboxes",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("email", Text, nullable=False, server_default=""),
    Column("history_id", Numeric(20, 0)),
    Column("paused", Boolean, nullable=False, server_default=text("false")),
    Column("due_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("failures", Integer, nullable=False, server_default="0"),
    Column("last_polled_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    # Gmail push (docs/PUSH.md): the watch we hold (its expiry; NULL: none), when to make or renew it,
    # and the failures since the last success (the last reason as a short code).
    Column("watch_expires_at", DateTime(timezone=True)),
    Column("watch_due_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("watch_failures", Integer, nullable=False, server_default="0"),
    Column("watch_error", Text),
    # When a poll claimed the mailbox (NULL: none in flight), the latest push, and the highest history id
    # that pushes named and no read has covered yet: pushes during a poll coalesce into one more read.
    Column("claimed_at", DateTime(timezone=True)),
    Column("pushed_at", DateTime(timezone=True)),
    Column("pushed_history_id", Numeric(20, 0)),
)
Index("mailboxes_due_idx", mailboxes.c.due_at, postgresql_where=text("NOT paused"))
Index("mailboxes_email_idx", func.lower(mailboxes.c.email))
Index("mailboxes_watch_due_idx", mailboxes.c.watch_due_at, postgresql_where=text("NOT paused"))

# Gmail watches to stop (users.stop), outside any transaction: the user id only, and the deletion to
# report once stopped when an account deletion queued it. Deleted when done or after bounded attempts.
watch_stops = Table(
    "watch_stops",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("deletion_id", Text),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("due_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Index("watch_stops_due_idx", "due_at"),
)

# The threads of running sequences (one thread per sequence).
watches = Table(
    "watches",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("sequence_id", Text, primary_key=True),
    Column("contact_id", Text, nullable=False),
    Column("contact_email", Text, nullable=False, server_default=""),
    Column("thread_id", Text, nullable=False),
    Column("needs_recheck", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Index("watches_thread_idx", "user_id", "thread_id"),
    Index("watches_contact_idx", "user_id", "contact_id"),
)

# Gmail ids of every message CoffeePing sent (from ``sequence.message_sent``).
sent_messages = Table(
    "sent_messages",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("message_id", Text, primary_key=True),
    Column("thread_id", Text, nullable=False),
    Column("sequence_id", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
)

# Every message of a watched thread the watcher has decided about, so none is processed twice.
# ``outcome``: reply, bounce, takeover (detections, exported), own, self, gone, or pending_sent (a SENT
# message not yet known as ours, decided after a grace period).
seen_messages = Table(
    "seen_messages",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("message_id", Text, primary_key=True),
    Column("thread_id", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("contact_id", Text),
    Column("seen_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("decided_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Index("seen_messages_pending_idx", "user_id", postgresql_where=text("outcome = 'pending_sent'")),
)

DETECTIONS = ("reply", "bounce", "takeover")

outbox, inbox, tombstones = shared_tables(metadata)
# Every Gmail call made for a user (``coffeeping.common.access_log``), and the marks of deleted contacts'
# sequences.
gmail_access, forgotten_sequences = access_tables(metadata)
