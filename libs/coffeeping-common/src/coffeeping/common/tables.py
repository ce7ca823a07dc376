"""The tables every backend has in its own schema, as SQLAlchemy Core: the messaging outbox and inbox
(``coffeeping.common.messaging``) and the tombstones (``coffeeping.common.tombstones``).

Each service's ``models.py`` adds them to its metadata with ``shared_tables(metadata)``; the service's
migrations carry the same DDL frozen, and a test compares every ``models.py`` with the migrated schema.
The library's own queries, which are handed a schema name at run time, build theirs once per schema
with ``schema_tables(schema)``.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

from sqlalchemy import Column, DateTime, Index, Integer, LargeBinary, MetaData, Table, Text, Uuid, text
from sqlalchemy.dialects.postgresql import JSONB

from .db import check_schema

_NOW = text("now()")  # server defaults are DDL, not queries


def shared_tables(metadata: MetaData) -> tuple[Table, Table, Table]:
    """(outbox, inbox, tombstones) in ``metadata``'s schema."""
    outbox = Table(
        "outbox",
        metadata,
        Column("id", Uuid, primary_key=True),
        Column("user_id", Text, nullable=False),
        Column("routing_key", Text, nullable=False),
        Column("body", JSONB, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
        Column("published_at", DateTime(timezone=True)),
        Column("attempts", Integer, nullable=False, server_default="0"),
        Index("outbox_unpublished_idx", "created_at", "id", postgresql_where=text("published_at IS NULL")),
        Index("outbox_published_idx", "published_at", postgresql_where=text("published_at IS NOT NULL")),
    )
    inbox = Table(
        "inbox",
        metadata,
        Column("event_id", Uuid, primary_key=True),
        Column("user_id", Text, nullable=False),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
        Index("inbox_processed_idx", "processed_at"),
    )
    # Non-identifying marks of deleted accounts: HMAC-SHA256 of the user id under TOMBSTONE_KEY.
    tombstones = Table(
        "tombstones",
        metadata,
        Column("subject", LargeBinary, primary_key=True),
        Column("buried_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    )
    return outbox, inbox, tombstones


class SharedTables(NamedTuple):
    outbox: Table
    inbox: Table
    tombstones: Table


@cache
def schema_tables(schema: str) -> SharedTables:
    """The shared tables of ``schema``, in a metadata of their own, built once per schema."""
    return SharedTables(*shared_tables(MetaData(schema=check_schema(schema))))


__all__ = ["SharedTables", "schema_tables", "shared_tables"]
