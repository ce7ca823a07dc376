"""DDL that several services' Alembic migrations run, frozen and versioned.

A migration that has run must run the same SQL forever, whatever happens to the library's live code.
So the SQL that more than one migration runs lives here once, as versioned constants that are **never edited**: when the
DDL has to change, add ``<NAME>_V2`` beside ``<NAME>_V1`` and a new migration that runs it.
``tests/unit/common/test_frozen_ddl.py`` pins the SHA-256 of every constant, so an edit fails the suite.

Each constant is a tuple of SQL statements with a ``{schema}`` placeholder (and ``{table}`` for the
row-level security ones); a migration runs ``render(CONSTANT, schema=..., table=...)`` in order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def render(statements: Sequence[str], **names: str) -> list[str]:
    """The statements with their placeholders filled in (``KeyError`` for a placeholder not named,
    ``ValueError`` for a name that is not a plain SQL identifier)."""
    for value in names.values():
        if not isinstance(value, str) or not _NAME.match(value):
            raise ValueError("invalid SQL identifier")
    return [statement.format(**names) for statement in statements]


def _for_table(statements: Sequence[str], table: str) -> tuple[str, ...]:
    """``statements`` with ``{table}`` filled in and ``{schema}`` left for ``render``."""
    return tuple(statement.replace("{table}", table) for statement in statements)


# Forced row-level security on ``{schema}.{table}``, keyed by its ``user_id`` column: the policy
# ``{table}_owner`` lets a transaction see and write the rows of the user it has set (``app.user_id``).
RLS_OWNER_V1: tuple[str, ...] = (
    "ALTER TABLE {schema}.{table} ENABLE ROW LEVEL SECURITY",
    "ALTER TABLE {schema}.{table} FORCE ROW LEVEL SECURITY",
    "DROP POLICY IF EXISTS {table}_owner ON {schema}.{table}",
    "CREATE POLICY {table}_owner ON {schema}.{table} "
    "USING (user_id = current_setting('app.user_id', true)) "
    "WITH CHECK (user_id = current_setting('app.user_id', true))",
)

# As ``RLS_OWNER_V1``, and the system scope (``app.scope = 'system'``: relays, schedulers, cross-user
# jobs) sees and writes every row.
RLS_OWNER_OR_SYSTEM_V1: tuple[str, ...] = (
    "ALTER TABLE {schema}.{table} ENABLE ROW LEVEL SECURITY",
    "ALTER TABLE {schema}.{table} FORCE ROW LEVEL SECURITY",
    "DROP POLICY IF EXISTS {table}_owner ON {schema}.{table}",
    "CREATE POLICY {table}_owner ON {schema}.{table} "
    "USING (user_id = current_setting('app.user_id', true) OR current_setting('app.scope', true) = 'system') "
    "WITH CHECK (user_id = current_setting('app.user_id', true) OR current_setting('app.scope', true) = 'system')",
)

# The messaging outbox and inbox of ``{schema}`` (frozen 2026-12-01), with their
# row-level security.
OUTBOX_INBOX_V1: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS {schema}.outbox (
            id uuid PRIMARY KEY,
            user_id text NOT NULL,
            routing_key text NOT NULL,
            body jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            published_at timestamptz NULL,
            attempts integer NOT NULL DEFAULT 0
        )""",
    "CREATE INDEX IF NOT EXISTS outbox_unpublished_idx ON {schema}.outbox (created_at, id) "
    "WHERE published_at IS NULL",
    "CREATE INDEX IF NOT EXISTS outbox_published_idx ON {schema}.outbox (published_at) "
    "WHERE published_at IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS {schema}.inbox (
            event_id uuid PRIMARY KEY,
            user_id text NOT NULL,
            processed_at timestamptz NOT NULL DEFAULT now()
        )""",
    "CREATE INDEX IF NOT EXISTS inbox_processed_idx ON {schema}.inbox (processed_at)",
    *_for_table(RLS_OWNER_OR_SYSTEM_V1, "outbox"),
    *_for_table(RLS_OWNER_OR_SYSTEM_V1, "inbox"),
)
OUTBOX_INBOX_DROP_V1: tuple[str, ...] = (
    "DROP TABLE IF EXISTS {schema}.inbox",
    "DROP TABLE IF EXISTS {schema}.outbox",
)

# Non-identifying marks of deleted accounts (HMAC-SHA256 of the user id under TOMBSTONE_KEY): every
# consumer and write path refuses a buried user. No user_id column, so no row-level security.
TOMBSTONES_V1: tuple[str, ...] = (
    "CREATE TABLE {schema}.tombstones (subject bytea PRIMARY KEY, buried_at timestamptz NOT NULL DEFAULT now())",
)
TOMBSTONES_DROP_V1: tuple[str, ...] = ("DROP TABLE {schema}.tombstones",)

# The Gmail access log of ``{schema}`` (frozen 2026-11-30): one row per Gmail API call made on a user's
# behalf (ids, method, format, header names, outcome; never content, a subject, an address or a header
# value), with forced row-level security open to the system scope (the batched writer inserts for many
# users, the retention sweep deletes across users). ``forgotten_sequences`` holds HMAC-SHA256 marks of
# deleted contacts' sequences, so that a call recorded after the deletion keeps none of its ids; it
# names nobody, so it has no row-level security.
GMAIL_ACCESS_V1: tuple[str, ...] = (
    """CREATE TABLE {schema}.gmail_access (
            id bigserial PRIMARY KEY,
            user_id text NOT NULL,
            at timestamptz NOT NULL,
            kind text NOT NULL,
            method text NOT NULL,
            scopes text[] NOT NULL,
            http_status smallint NULL,
            quota_units smallint NOT NULL,
            thread_id text NULL,
            message_id text NULL,
            draft_id text NULL,
            format text NULL,
            metadata_headers text[] NOT NULL DEFAULT '{{}}',
            sequence_id text NULL,
            step smallint NULL,
            contact_deleted boolean NOT NULL DEFAULT false
        )""",
    "CREATE INDEX gmail_access_user_idx ON {schema}.gmail_access (user_id, at, id)",
    "CREATE INDEX gmail_access_at_idx ON {schema}.gmail_access USING brin (at)",
    *_for_table(RLS_OWNER_OR_SYSTEM_V1, "gmail_access"),
    "CREATE TABLE {schema}.forgotten_sequences (subject bytea PRIMARY KEY, "
    "forgotten_at timestamptz NOT NULL DEFAULT now())",
)
GMAIL_ACCESS_DROP_V1: tuple[str, ...] = (
    "DROP TABLE {schema}.forgotten_sequences",
    "DROP TABLE {schema}.gmail_access",
)

__all__ = [
    "GMAIL_ACCESS_DROP_V1",
    "GMAIL_ACCESS_V1",
    "OUTBOX_INBOX_DROP_V1",
    "OUTBOX_INBOX_V1",
    "RLS_OWNER_OR_SYSTEM_V1",
    "RLS_OWNER_V1",
    "TOMBSTONES_DROP_V1",
    "TOMBSTONES_V1",
    "render",
]
