"""Token-issue records, written in batches by a background writer (``coffeeping.common.batch_writer``).

Every access token the vault hands out is recorded (user, caller, time, outcome, which scopes and until
when it is valid), but a database transaction per token request would cost more than the request
itself. Requests append the record to an in-memory queue; the writer inserts the queue in one statement
at least every ``interval_s`` (100 ms) and once more at shutdown, after the gRPC server has drained.

What a hard crash (SIGKILL, OOM, power loss) can lose is the last unflushed batch: at most ~100 ms of
records of *handing out again* an access token whose existence is already durably recorded — every
token comes into being through a grant stored or a refresh, and those records, like every failure,
refusal and revocation, are still written in the same transaction as the change they describe. The
trail therefore always shows which tokens existed and who obtained them; a crash can only shorten the
list of repeat hand-outs in its last 100 ms. (Before batching, issue records were already written with
``synchronous_commit = off``, which has the same exposure to a database crash.) A database outage keeps
the records queued, up to ``max_pending``, and retries.

Purge safety: a user purged while records for them are queued here, in this or another process, must
not get a trail back. A flush takes a shared advisory lock per user (the purge takes it exclusively)
and then inserts only for users who still have an audit trail — a purged user has none, while a
revoked one keeps theirs.

Retention: token issues and refreshes older than ``ACCESS_LOG_RETENTION_DAYS`` are deleted (``expire``),
like the Gmail access logs they belong with; the grant's other records (stored, revoked, failures) stay.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Engine, Interval, bindparam, delete, exists, func, insert, literal, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import DateTime, Text

from coffeeping.common.access_log import short_scope
from coffeeping.common.batch_writer import BatchWriter
from coffeeping.common.db import system_tx, user_tx
from coffeeping_vault.models import audit

_LOCK_PREFIX = "vault.grant:"
ACCESS_ACTIONS = ("token_issued", "token_refreshed")
_EXPIRE_EVERY_S = 3600.0
_EXPIRE_BATCH = 10_000


def user_lock_key(user_id: str) -> str:
    """The advisory-lock key that serialises a user's grant changes, purges and audit flushes."""
    return f"{_LOCK_PREFIX}{user_id}"


def short_scopes(scopes: Iterable[str]) -> list[str]:
    """``gmail.send`` for ``https://www.googleapis.com/auth/gmail.send`` (the access log's spelling)."""
    return [short_scope(s) for s in scopes]


@dataclass(frozen=True)
class IssueRecord:
    user_id: str
    caller: str
    at: dt.datetime
    detail: str
    scopes: tuple[str, ...]
    expires_at: dt.datetime | None


_users = bindparam("users", type_=ARRAY(Text))
# The batch's users' lock keys (``user_lock_key``), each once and in order, so that flushes never deadlock.
_lock_key = (literal(_LOCK_PREFIX) + func.unnest(_users).column_valued("u")).label("k")
_keys = select(_lock_key).distinct().order_by(_lock_key).subquery("keys")
_LOCK_USERS = select(func.count(func.pg_advisory_xact_lock_shared(func.hashtext(_keys.c.k))))
# A second statement, so that its snapshot sees any purge that committed while we waited for the locks.
# Each record's scopes travel as one space-separated string (an array of arrays must be rectangular).
_records = func.unnest(
    _users,
    bindparam("callers", type_=ARRAY(Text)),
    bindparam("ats", type_=ARRAY(DateTime(timezone=True))),
    bindparam("details", type_=ARRAY(Text)),
    bindparam("scopes", type_=ARRAY(Text)),
    bindparam("expiries", type_=ARRAY(DateTime(timezone=True))),
).table_valued("user_id", "caller", "at", "detail", "scopes", "expires_at").render_derived("r")
_trail = audit.alias("a")
_INSERT = insert(audit).from_select(
    ["user_id", "caller", "at", "action", "outcome", "detail", "scopes", "expires_at"],
    select(_records.c.user_id, _records.c.caller, _records.c.at, literal("token_issued"), literal("ok"),
           _records.c.detail, func.string_to_array(_records.c.scopes, " "), _records.c.expires_at)
    .where(exists().where(_trail.c.user_id == _records.c.user_id)),
)
_EXPIRED = (select(audit.c.id).where(audit.c.action.in_(ACCESS_ACTIONS),
                                     audit.c.at < func.now() - bindparam("age", type_=Interval()))
            .limit(_EXPIRE_BATCH))


class AuditWriter:
    def __init__(self, engine: Engine, interval_s: float = 0.1, max_pending: int = 1_000_000,
                 retention_days: int = 400) -> None:
        self.engine = engine
        self.retention_days = retention_days
        self._batches: BatchWriter[IssueRecord] = BatchWriter(self._write, "vault-audit", interval_s, max_pending)

    @property
    def dropped(self) -> int:
        return self._batches.dropped

    def issued(self, user_id: str, caller: str, detail: str = "", scopes: Iterable[str] = (),
               expires_at: dt.datetime | None = None) -> None:
        record = IssueRecord(user_id, caller or "unknown", dt.datetime.now(dt.UTC), detail[:200],
                             tuple(short_scopes(scopes)), expires_at)
        if not self._batches.running:
            # No writer thread (a one-off command, or before start-up finished): write it now.
            with user_tx(self.engine, user_id) as conn:
                conn.execute(insert(audit).values(
                    user_id=record.user_id, caller=record.caller, at=record.at, action="token_issued", outcome="ok",
                    detail=record.detail, scopes=list(record.scopes), expires_at=record.expires_at))
            return
        self._batches.add(record)

    def pending(self) -> int:
        return self._batches.pending()

    def flush(self) -> int:
        """Write what is queued; on failure put it back (in order) for the next attempt."""
        return self._batches.flush()

    def _write(self, batch: list[IssueRecord]) -> None:
        with system_tx(self.engine) as conn:
            users = [r.user_id for r in batch]
            conn.execute(_LOCK_USERS, {"users": users})
            conn.execute(_INSERT, {"users": users, "callers": [r.caller for r in batch],
                                   "ats": [r.at for r in batch], "details": [r.detail for r in batch],
                                   "scopes": [" ".join(r.scopes) for r in batch],
                                   "expiries": [r.expires_at for r in batch]})

    def expire(self) -> int:
        """Delete token issues and refreshes older than the retention period (in batches); how many."""
        age = dt.timedelta(days=self.retention_days)
        removed = 0
        while True:
            with system_tx(self.engine) as conn:
                gone = conn.execute(delete(audit).where(audit.c.id.in_(_EXPIRED.scalar_subquery())),
                                    {"age": age}).rowcount
            removed += gone
            if gone < _EXPIRE_BATCH:
                return removed

    def run(self, stop: threading.Event) -> None:
        """Flush every ``interval_s`` until ``stop``, then once more (the server has drained by then);
        hourly, delete what is past the retention period."""
        self._batches.run(stop, housekeeping=self.expire, housekeeping_every_s=_EXPIRE_EVERY_S)
