"""Token-issue records, written in batches by a background writer.

Every access token the vault hands out is recorded (user, caller, time, outcome, which scopes), but a
database transaction per token request would cost more than the request itself. Requests append the
record to an in-memory queue; the writer inserts the queue in one statement at least every
``interval_s`` (100 ms) and once more at shutdown, after the gRPC server has drained.

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
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from dataclasses import dataclass

from sqlalchemy import Engine, bindparam, exists, func, insert, literal, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import DateTime, Text

from coffeeping.common.db import system_tx, user_tx
from coffeeping_vault.models import audit

log = logging.getLogger(__name__)

_LOCK_PREFIX = "vault.grant:"


def user_lock_key(user_id: str) -> str:
    """The advisory-lock key that serialises a user's grant changes, purges and audit flushes."""
    return f"{_LOCK_PREFIX}{user_id}"


@dataclass(frozen=True)
class IssueRecord:
    user_id: str
    caller: str
    at: dt.datetime
    detail: str


_users = bindparam("users", type_=ARRAY(Text))
# The batch's users' lock keys (``user_lock_key``), each once and in order, so that flushes never deadlock.
_lock_key = (literal(_LOCK_PREFIX) + func.unnest(_users).column_valued("u")).label("k")
_keys = select(_lock_key).distinct().order_by(_lock_key).subquery("keys")
_LOCK_USERS = select(func.count(func.pg_advisory_xact_lock_shared(func.hashtext(_keys.c.k))))
# A second statement, so that its snapshot sees any purge that committed while we waited for the locks.
_records = func.unnest(
    _users,
    bindparam("callers", type_=ARRAY(Text)),
    bindparam("ats", type_=ARRAY(DateTime(timezone=True))),
    bindparam("details", type_=ARRAY(Text)),
).table_valued("user_id", "caller", "at", "detail").render_derived("r")
_trail = audit.alias("a")
_INSERT = insert(audit).from_select(
    ["user_id", "caller", "at", "action", "outcome", "detail"],
    select(_records.c.user_id, _records.c.caller, _records.c.at, literal("token_issued"), literal("ok"),
           _records.c.detail)
    .where(exists().where(_trail.c.user_id == _records.c.user_id)),
)


class AuditWriter:
    def __init__(self, engine: Engine, interval_s: float = 0.1, max_pending: int = 1_000_000) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: list[IssueRecord] = []
        self._running = False
        self.dropped = 0

    def issued(self, user_id: str, caller: str, detail: str = "") -> None:
        record = IssueRecord(user_id, caller or "unknown", dt.datetime.now(dt.UTC), detail[:200])
        if not self._running:
            # No writer thread (a one-off command, or before start-up finished): write it now.
            with user_tx(self.engine, user_id) as conn:
                conn.execute(insert(audit).values(user_id=record.user_id, caller=record.caller, at=record.at,
                                                  action="token_issued", outcome="ok", detail=record.detail))
            return
        with self._lock:
            if len(self._pending) >= self.max_pending:
                self._pending.pop(0)
                self.dropped += 1
            self._pending.append(record)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush(self) -> int:
        """Write what is queued; on failure put it back (in order) for the next attempt."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch:
                return 0
            try:
                with system_tx(self.engine) as conn:
                    users = [r.user_id for r in batch]
                    conn.execute(_LOCK_USERS, {"users": users})
                    conn.execute(_INSERT, {"users": users, "callers": [r.caller for r in batch],
                                           "ats": [r.at for r in batch], "details": [r.detail for r in batch]})
            except Exception as exc:
                with self._lock:
                    self._pending[:0] = batch
                    overflow = len(self._pending) - self.max_pending
                    if overflow > 0:
                        del self._pending[:overflow]
                        self.dropped += overflow
                log.warning("audit batch not written; will retry", extra={"records": len(batch),
                                                                          "error": type(exc).__name__})
                raise
            return len(batch)

    def run(self, stop: threading.Event) -> None:
        """Flush every ``interval_s`` until ``stop``, then once more (the server has drained by then)."""
        self._running = True
        try:
            while not stop.wait(self.interval_s):
                try:
                    self.flush()
                except Exception:  # noqa: BLE001 - logged in flush; the records stay queued
                    stop.wait(1.0)
        finally:
            self._running = False
            for _attempt in range(3):
                with contextlib.suppress(Exception):  # logged in flush
                    self.flush()
                if not self.pending():
                    break
            if self.pending():
                log.error("audit records lost at shutdown", extra={"records": self.pending()})
