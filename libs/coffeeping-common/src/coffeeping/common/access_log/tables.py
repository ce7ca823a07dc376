"""The access log's tables as SQLAlchemy Core (the DDL is ``frozen_ddl.GMAIL_ACCESS_V1``): each service
that calls Gmail adds them to its metadata with ``access_tables(metadata)``."""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    text,
)

from coffeeping.common.db import check_schema


class AccessTables(NamedTuple):
    gmail_access: Table
    forgotten_sequences: Table


def access_tables(metadata: MetaData) -> AccessTables:
    """(gmail_access, forgotten_sequences) in ``metadata``'s schema."""
    gmail_access = Table(
        "gmail_access",
        metadata,
        Column("id", BigInteger, primary_key=True),  # bigserial
        Column("user_id", Text, nullable=False),
        Column("at", DateTime(timezone=True), nullable=False),
        Column("kind", Text, nullable=False),
        Column("method", Text, nullable=False),
        Column("scopes", ARRAY(Text), nullable=False),
        Column("http_status", SmallInteger),  # NULL: Gmail never answered
        Column("quota_units", SmallInteger, nullable=False),
        Column("thread_id", Text),
        Column("message_id", Text),
        Column("draft_id", Text),
        Column("format", Text),
        Column("metadata_headers", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
        Column("sequence_id", Text),
        Column("step", SmallInteger),
        Column("contact_deleted", Boolean, nullable=False, server_default=text("false")),
        Index("gmail_access_user_idx", "user_id", "at", "id"),
        Index("gmail_access_at_idx", "at", postgresql_using="brin"),
    )
    forgotten_sequences = Table(
        "forgotten_sequences",
        metadata,
        Column("subject", LargeBinary, primary_key=True),
        Column("forgotten_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    )
    return AccessTables(gmail_access, forgotten_sequences)


@cache
def schema_access_tables(schema: str) -> AccessTables:
    """The access log's tables of ``schema``, in a metadata of their own, built once per schema."""
    return access_tables(MetaData(schema=check_schema(schema)))


__all__ = ["AccessTables", "access_tables", "schema_access_tables"]
