"""The mailer's part of a user's access log: every Gmail call it made for them, each described with the
subject and step of the user's own sequence (never anything read from Gmail)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, Select, Table, Uuid, cast

from coffeeping.common import access_log
from coffeeping.common.access_log import Filter, Page
from coffeeping.types.v1 import access_pb2
from coffeeping_mailer import SERVICE
from coffeeping_mailer.models import SCHEMA, sequences

EXPORT_SECTION = "gmail_access_by_mailer"


def _with_subject(query: Select[Any], log: Table) -> Select[Any]:
    """The log's rows with the subject of the sequence each call served (row-level security: the user's)."""
    return query.outerjoin(sequences, sequences.c.id == cast(log.c.sequence_id, Uuid)).add_columns(sequences.c.subject)


def list_entries(engine: Engine, user_id: str, page: Page) -> access_pb2.ListAccessEntriesResponse:
    return access_log.list_entries(engine, SCHEMA, SERVICE, user_id, page, _with_subject)


def summarize(engine: Engine, user_id: str, flt: Filter) -> access_pb2.SummarizeAccessResponse:
    return access_log.summarize(engine, SCHEMA, user_id, flt)


def export_entries(engine: Engine, user_id: str) -> Iterator[access_pb2.AccessEntry]:
    return access_log.export_entries(engine, SCHEMA, SERVICE, user_id, _with_subject)
