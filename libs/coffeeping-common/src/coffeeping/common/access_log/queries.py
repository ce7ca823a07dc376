"""Reading a user's access log: pages newest first, counts per day and kind, and the export.

Every query runs in the user's transaction (row-level security). The request messages are
``coffeeping.types.v1`` (``ListAccessEntriesRequest``, ``SummarizeAccessRequest``); a bad filter raises
``BadRequest`` (the servicer answers INVALID_ARGUMENT).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import ColumnElement, Engine, Select, Table, and_, func, or_, select, true, tuple_

from coffeeping.common.access_log.calls import KINDS
from coffeeping.common.access_log.tables import schema_access_tables
from coffeeping.common.access_log.words import describe
from coffeeping.common.db import user_tx
from coffeeping.types.v1 import access_pb2

DEFAULT_PAGE = 50
MAX_PAGE = 100
_MAX_METHOD = 64
# A query of the log's table that adds the user's own sequence subject (a ``subject`` column) to its rows.
WithSubject = Callable[[Select[Any], Table], Select[Any]]


class BadRequest(ValueError):
    """A filter or page the log cannot use: which field, and what is wrong with it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _time(stamp: Timestamp, present: bool) -> dt.datetime | None:
    return stamp.ToDatetime(tzinfo=dt.UTC) if present else None


@dataclass(frozen=True)
class Filter:
    kind: str = ""
    method: str = ""
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    @classmethod
    def of(cls, message: access_pb2.AccessFilter) -> Filter:
        if message.kind and message.kind not in KINDS:
            raise BadRequest("filter.kind", "unknown kind")
        if len(message.method) > _MAX_METHOD:
            raise BadRequest("filter.method", "too long")
        return cls(message.kind, message.method, _time(message.since, message.HasField("since")),
                   _time(message.until, message.HasField("until")))

    def conditions(self, at: Any, kind: Any, method: Any) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.kind:
            found.append(kind == self.kind)
        if self.method:
            found.append(method == self.method)
        if self.since is not None:
            found.append(at >= self.since)
        if self.until is not None:
            found.append(at < self.until)
        return found


@dataclass(frozen=True)
class Page:
    """What a ``ListAccessEntriesRequest`` asks for: how many, which, and after which entry."""

    size: int
    filter: Filter
    before: tuple[dt.datetime, int] | None

    @classmethod
    def of(cls, request: access_pb2.ListAccessEntriesRequest) -> Page:
        if request.page_size < 0:
            raise BadRequest("page_size", "must not be negative")
        size = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
        before = (request.before.ToDatetime(tzinfo=dt.UTC), request.before_id) if request.HasField("before") else None
        return cls(size, Filter.of(request.filter), before)

    def conditions(self, at: Any, id_: Any, kind: Any, method: Any) -> list[ColumnElement[bool]]:
        found = self.filter.conditions(at, kind, method)
        if self.before is not None:
            found.append(tuple_(at, id_) < tuple_(*self.before))
        return found


def _stamp(value: dt.datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def entry_message(service: str, row: Any, subject: str | None = None) -> access_pb2.AccessEntry:
    """A ``gmail_access`` row as an ``AccessEntry``, with its description."""
    entry = access_pb2.AccessEntry(
        id=row.id, service=service, at=_stamp(row.at), kind=row.kind, method=row.method, scopes=row.scopes,
        thread_id=row.thread_id, message_id=row.message_id, draft_id=row.draft_id, format=row.format,
        metadata_headers=row.metadata_headers, http_status=row.http_status, quota_units=row.quota_units,
        sequence_id=row.sequence_id, step=row.step, contact_deleted=row.contact_deleted)
    entry.description = describe(service, entry, subject)
    return entry


def _base(schema: str, with_subject: WithSubject | None) -> tuple[Table, Select[Any]]:
    log, _ = schema_access_tables(schema)
    query = select(log)
    return log, with_subject(query, log) if with_subject is not None else query


def list_entries(engine: Engine, schema: str, service: str, user_id: str, page: Page,
                 with_subject: WithSubject | None = None) -> access_pb2.ListAccessEntriesResponse:
    log, query = _base(schema, with_subject)
    query = (query.where(*page.conditions(log.c.at, log.c.id, log.c.kind, log.c.method))
             .order_by(log.c.at.desc(), log.c.id.desc()).limit(page.size))
    with user_tx(engine, user_id) as conn:
        rows = conn.execute(query).all()
    return access_pb2.ListAccessEntriesResponse(
        entries=[entry_message(service, row, getattr(row, "subject", None)) for row in rows])


def day_of(at: Any) -> ColumnElement[str]:
    """``YYYY-MM-DD`` of a timestamp, in UTC."""
    return func.to_char(func.timezone("UTC", at), "YYYY-MM-DD")


def summarize(engine: Engine, schema: str, user_id: str, flt: Filter) -> access_pb2.SummarizeAccessResponse:
    log, _ = schema_access_tables(schema)
    where = flt.conditions(log.c.at, log.c.kind, log.c.method)
    day = day_of(log.c.at).label("day")
    failed = or_(log.c.http_status.is_(None), log.c.http_status >= 400)
    counts = (select(day, log.c.kind, func.count().label("calls"), func.coalesce(func.sum(log.c.quota_units), 0)
                     .label("units"), func.count().filter(failed).label("failed"))
              .where(*where).group_by(day, log.c.kind).order_by(day, log.c.kind))
    asked = func.unnest(log.c.metadata_headers).table_valued("header").render_derived("h")
    headers = (select(asked.c.header, func.count().label("reads")).select_from(log).join(asked, true())
               .where(and_(log.c.kind == "metadata_read", *where)).group_by(asked.c.header)
               .order_by(asked.c.header))
    with user_tx(engine, user_id) as conn:
        count_rows = conn.execute(counts).all()
        header_rows = conn.execute(headers).all()
    return access_pb2.SummarizeAccessResponse(
        counts=[access_pb2.AccessCount(day=r.day, kind=r.kind, calls=r.calls, quota_units=r.units, failed=r.failed)
                for r in count_rows],
        headers=[access_pb2.HeaderCount(header=r.header, reads=r.reads) for r in header_rows])


def export_json(entry: access_pb2.AccessEntry) -> str:
    """An entry as the export's JSON record (the section names the service)."""
    record = json_format.MessageToDict(entry, preserving_proto_field_name=True)
    record.pop("service", None)
    return json.dumps(record, ensure_ascii=False)


def export_entries(engine: Engine, schema: str, service: str, user_id: str,
                   with_subject: WithSubject | None = None) -> Iterator[access_pb2.AccessEntry]:
    """Every entry of the user, oldest first, streamed from one transaction."""
    log, query = _base(schema, with_subject)
    with user_tx(engine, user_id) as conn:
        rows = conn.execution_options(yield_per=500).execute(query.order_by(log.c.at, log.c.id))
        for row in rows:
            yield entry_message(service, row, getattr(row, "subject", None))


__all__ = ["BadRequest", "Filter", "Page", "day_of", "entry_message", "export_entries", "export_json", "list_entries",
           "summarize"]
