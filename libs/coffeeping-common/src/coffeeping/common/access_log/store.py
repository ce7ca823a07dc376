"""A service's Gmail access log in its own schema: written in batches, forgotten with a contact or an
account, expired after the retention period.

``AccessLog`` is the sink of every ``RecordingHttp`` of the service. Its writer thread
(``coffeeping.common.batch_writer``) parses the queued requests (``calls.call_of``) and inserts the batch
in one statement, at least every ``interval_s``; a failed write is retried and counted, never raised to
the work that made the call.

Deletion is safe against records still queued, in this process or another, as in the vault's audit:
a flush takes a shared advisory lock per user and then, in a second statement (whose snapshot sees
anything committed while it waited), inserts nothing for a buried user (``tombstones``) and strips the
ids from a record about a forgotten sequence (``forgotten_sequences``); an account purge or a contact's
deletion takes the user's lock exclusively, so the rows it deletes include every flush before it, and
no flush after it brings them back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import threading
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

from sqlalchemy import (
    ARRAY,
    Connection,
    Engine,
    Insert,
    Interval,
    Select,
    SmallInteger,
    Text,
    bindparam,
    case,
    column,
    delete,
    exists,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.types import DateTime

from coffeeping.common.access_log.calls import call_of
from coffeeping.common.access_log.recording import RecordingHttp, Sent
from coffeeping.common.access_log.tables import schema_access_tables
from coffeeping.common.batch_writer import BatchWriter
from coffeeping.common.db import InvalidUserId, system_tx
from coffeeping.common.tables import schema_tables
from coffeeping.common.tombstones import subject

# A call about a deleted contact's sequence can come this long after the deletion (a call in flight, a
# draft the cleaner removes afterwards, at most a few hours); the marks are kept a week.
MARK_LIFETIME = dt.timedelta(days=7)
_EXPIRE_EVERY_S = 3600.0
_EXPIRE_BATCH = 10_000


def _lock_key(schema: str, user_id: str) -> str:
    return f"{schema}.gmail_access:{user_id}"


def sequence_mark(key: bytes, sequence_id: str) -> bytes:
    """The non-identifying mark of a deleted contact's sequence (HMAC-SHA256 under ``TOMBSTONE_KEY``)."""
    return hmac.new(key, b"gmail_access.sequence:" + sequence_id.encode(), hashlib.sha256).digest()


@cache
def _statements(schema: str) -> tuple[Select[Any], Insert]:
    """The flush's two statements for ``schema``, built once: the shared locks of the batch's users (one
    key each, in order, so that flushes never deadlock), then the insert of its rows."""
    log, marks = schema_access_tables(schema)
    tombstones = schema_tables(schema).tombstones
    keys = func.unnest(bindparam("keys", type_=ARRAY(Text))).column_valued("k")
    lock = select(func.count(func.pg_advisory_xact_lock_shared(func.hashtext(keys))))
    rows = func.jsonb_to_recordset(bindparam("rows", type_=JSONB)).table_valued(
        column("user_id", Text), column("at", DateTime(timezone=True)), column("kind", Text),
        column("method", Text), column("scopes", ARRAY(Text)), column("http_status", SmallInteger),
        column("quota_units", SmallInteger), column("thread_id", Text), column("message_id", Text),
        column("draft_id", Text), column("format", Text), column("metadata_headers", ARRAY(Text)),
        column("sequence_id", Text), column("step", SmallInteger), column("buried", Text), column("mark", Text),
    ).render_derived("r", with_types=True)
    forgotten = marks.c.subject.is_not(None)

    def unless_forgotten(value: Any) -> Any:
        return case((forgotten, None), else_=value)

    chosen = (
        select(rows.c.user_id, rows.c.at, rows.c.kind, rows.c.method, rows.c.scopes, rows.c.http_status,
               rows.c.quota_units, unless_forgotten(rows.c.thread_id), unless_forgotten(rows.c.message_id),
               unless_forgotten(rows.c.draft_id), rows.c.format, rows.c.metadata_headers,
               unless_forgotten(rows.c.sequence_id), unless_forgotten(rows.c.step), forgotten)
        .select_from(rows.outerjoin(marks, marks.c.subject == func.decode(rows.c.mark, "hex")))
        .where(~exists().where(tombstones.c.subject == func.decode(rows.c.buried, "hex")))
    )
    columns = ["user_id", "at", "kind", "method", "scopes", "http_status", "quota_units", "thread_id", "message_id",
               "draft_id", "format", "metadata_headers", "sequence_id", "step", "contact_deleted"]
    return lock, insert(log).from_select(columns, chosen)


def _row(request: Sent, buried: bytes, key: bytes) -> dict[str, Any]:
    call = call_of(request.verb, request.uri)
    about = request.about
    sequence_id = about.sequence_id if about else None
    return {
        "user_id": request.user_id, "at": dt.datetime.fromtimestamp(request.at, dt.UTC).isoformat(),
        "kind": call.kind, "method": call.method, "scopes": list(request.scopes), "http_status": request.status,
        "quota_units": call.quota_units, "thread_id": call.thread_id or (about.thread_id if about else None),
        "message_id": call.message_id, "draft_id": call.draft_id, "format": call.format,
        "metadata_headers": list(call.metadata_headers), "sequence_id": sequence_id,
        "step": about.step if about else None, "buried": buried.hex(),
        "mark": sequence_mark(key, sequence_id).hex() if sequence_id else None,
    }


class AccessLog:
    """The Gmail access log of one service (``schema``); thread safe."""

    def __init__(self, engine: Engine, schema: str, tombstone_key: bytes, *, interval_s: float = 0.25,
                 max_pending: int = 500_000, retention_days: int = 400) -> None:
        self.engine = engine
        self.schema = schema
        self.key = tombstone_key
        self.retention_days = retention_days
        self._batches: BatchWriter[Sent] = BatchWriter(self._write, f"{schema}-gmail-access", interval_s,
                                                       max_pending)
        self.unwritable = 0  # records of an invalid user id, never written

    # -- recording ------------------------------------------------------------------------------------
    def http(self, transport: Any, user_id: str, scopes: Iterable[str]) -> RecordingHttp:
        """``transport`` for ``user_id``'s requests, each recorded with the token's ``scopes`` (short names)."""
        return RecordingHttp(transport, self, user_id, tuple(sorted(scopes)))

    def sent(self, request: Sent) -> None:
        self._batches.add(request)

    @property
    def dropped(self) -> int:
        """Records lost to a full queue (the database was unreachable for long)."""
        return self._batches.dropped

    @property
    def failures(self) -> int:
        """Writes that failed and were retried."""
        return self._batches.failures

    def pending(self) -> int:
        return self._batches.pending()

    def flush(self) -> int:
        """Write what is queued now (raises when the database refuses; the records stay queued)."""
        return self._batches.flush()

    def _write(self, batch: list[Sent]) -> None:
        buried: dict[str, bytes] = {}
        rows = []
        for request in batch:
            if request.user_id not in buried:
                try:
                    buried[request.user_id] = subject(self.key, request.user_id)
                except InvalidUserId:
                    self.unwritable += 1
                    continue
            rows.append(_row(request, buried[request.user_id], self.key))
        if not rows:
            return
        lock, insert_rows = _statements(self.schema)
        with system_tx(self.engine) as conn:
            conn.execute(lock, {"keys": sorted(_lock_key(self.schema, user) for user in buried)})
            conn.execute(insert_rows, {"rows": rows})

    # -- retention ------------------------------------------------------------------------------------
    def expire(self) -> int:
        """Delete entries older than the retention period and marks older than ``MARK_LIFETIME``, in
        batches; how many entries went."""
        log, marks = schema_access_tables(self.schema)
        old = (select(log.c.id).where(log.c.at < func.now() - bindparam("age", type_=Interval()))
               .limit(_EXPIRE_BATCH).scalar_subquery())
        removed = 0
        while True:
            with system_tx(self.engine) as conn:
                gone = conn.execute(delete(log).where(log.c.id.in_(old)),
                                    {"age": dt.timedelta(days=self.retention_days)}).rowcount
            removed += gone
            if gone < _EXPIRE_BATCH:
                break
        with system_tx(self.engine) as conn:
            conn.execute(delete(marks).where(marks.c.forgotten_at < func.now() - MARK_LIFETIME))
        return removed

    def run(self, stop: threading.Event) -> None:
        """The writer: flush every ``interval_s`` until ``stop`` and once more; hourly, the retention sweep."""
        self._batches.run(stop, housekeeping=self.expire, housekeeping_every_s=_EXPIRE_EVERY_S)

    def flushed_after(self, worker: Callable[[threading.Event], None]) -> Callable[[threading.Event], None]:
        """``worker`` (one that calls Gmail), then a flush: its last calls may come after the writer's own
        last flush at shutdown."""

        def run(stop: threading.Event) -> None:
            worker(stop)
            with contextlib.suppress(Exception):  # logged by the writer
                self.flush()

        return run


# -- deletion -------------------------------------------------------------------------------------------
def _lock_user(conn: Connection, schema: str, user_id: str) -> None:
    """Hold the user's log lock exclusively until commit: no flush runs for the user meanwhile."""
    conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(literal(_lock_key(schema, user_id))))))


def forget_sequences(conn: Connection, schema: str, key: bytes, user_id: str, sequence_ids: Iterable[object],
                     thread_ids: Iterable[str] = ()) -> int:
    """A contact was deleted: delete the user's entries about its sequences (and their threads), and mark
    the sequences so that a call recorded later about them keeps none of its ids. In the caller's
    transaction; the number of entries deleted."""
    sequences = sorted({str(s) for s in sequence_ids})
    threads = sorted({t for t in thread_ids if t})
    if not sequences and not threads:
        return 0
    log, marks = schema_access_tables(schema)
    _lock_user(conn, schema, user_id)
    if sequences:
        conn.execute(pg_insert(marks).values([{"subject": sequence_mark(key, s)} for s in sequences])
                     .on_conflict_do_nothing())
    about = log.c.sequence_id.in_(sequences) | log.c.thread_id.in_(threads)
    deleted: int = conn.execute(delete(log).where(log.c.user_id == user_id, about)).rowcount
    return deleted


def purge_user(conn: Connection, schema: str, user_id: str) -> int:
    """An account deletion (the user is already buried in this transaction): delete every entry."""
    log, _ = schema_access_tables(schema)
    _lock_user(conn, schema, user_id)
    deleted: int = conn.execute(delete(log).where(log.c.user_id == user_id)).rowcount
    return deleted


__all__ = ["MARK_LIFETIME", "AccessLog", "forget_sequences", "purge_user", "sequence_mark"]
