"""What the reply watcher stores (schema ``watcher``; DDL in ``migrations/``).

Never a subject, a body or any header value of a received message: only Gmail ids, the kind of a
detection and times. The user's own Gmail address and the contact's address come from our own events.
"""

from sqlalchemy import Boolean, Column, DateTime, Integer, MetaData, Numeric, Table, Text

metadata = MetaData(schema="watcher")

# One row per user with active watches: the history cursor and the poll schedule (system scope).
mailboxes = Table(
    "mailboxes",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("email", Text, nullable=False),
    Column("history_id", Numeric(20, 0)),
    Column("paused", Boolean, nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("failures", Integer, nullable=False),
    Column("last_polled_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# The threads of running sequences (one thread per sequence).
watches = Table(
    "watches",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("sequence_id", Text, primary_key=True),
    Column("contact_id", Text, nullable=False),
    Column("contact_email", Text, nullable=False),
    Column("thread_id", Text, nullable=False),
    Column("needs_recheck", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Gmail ids of every message CoffeePing sent (from ``sequence.message_sent``).
sent_messages = Table(
    "sent_messages",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("message_id", Text, primary_key=True),
    Column("thread_id", Text, nullable=False),
    Column("sequence_id", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
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
    Column("seen_at", DateTime(timezone=True), nullable=False),
    Column("decided_at", DateTime(timezone=True), nullable=False),
)

DETECTIONS = ("reply", "bounce", "takeover")
