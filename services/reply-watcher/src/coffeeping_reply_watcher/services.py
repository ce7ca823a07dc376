"""What the reply watcher does with its state, independent of how it is called.

Event handlers (``watch_sequence`` ...) run inside the consumer's transaction for one user. The poll
keeps its database work short: ``claim_due`` (system scope, a lease on each claimed mailbox),
``load_state`` before talking to Gmail, and ``commit_poll`` after, in one transaction that records every
outcome, publishes the detections through the outbox and advances the cursor (never backwards).

Gmail push (docs/PUSH.md) works the same way: ``claim_watches`` / ``commit_watch`` / ``watch_failed``
around each ``users.watch``, ``claim_stops`` / ``finish_stop`` / ``retry_stop`` around each
``users.stop``; no Gmail call ever runs inside a transaction. Event handlers only queue stops
(``watch_stops``), and a push only makes a mailbox due (``schedule_check``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column, Connection, Engine, Table, and_, case, delete, exists, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.sql import ColumnElement

from coffeeping.common.access_log import forget_sequences
from coffeeping.common.access_log import purge_user as purge_access_log
from coffeeping.common.db import system_tx, user_tx
from coffeeping.common.messaging import encode_payload, forget_user, publish_in_tx
from coffeeping.common.tombstones import bury, is_buried
from coffeeping.events.v1 import events_pb2 as ev
from coffeeping_reply_watcher.models import (
    DETECTIONS,
    mailboxes,
    seen_messages,
    sent_messages,
    watch_stops,
    watches,
)

log = logging.getLogger(__name__)

SCHEMA = "watcher"
SERVICE = "reply-watcher"
DETECTION_FOR = {"reply": ev.ReplyDetected, "bounce": ev.BounceDetected, "takeover": ev.TakeoverDetected}
_MAX_ID = 256
_MAX_HISTORY_ID = 2**63 - 1  # the cursor is a bigint
# A watch is renewed this long before it expires (half its remaining life when that is shorter).
RENEW_BEFORE = dt.timedelta(days=1)


class BadPayload(ValueError):
    """An event lacks a field the watcher needs (the consumer retries, then dead-letters it)."""


def _text(value: str, name: str, required: bool = True) -> str:
    # The consumer already refuses a message whose REQUIRED fields are unset; these functions are also
    # called directly (tests, benchmarks), so they check again, and bound the length.
    if not value:
        if required:
            raise BadPayload(f"payload.{name} is required")
        return ""
    if len(value) > _MAX_ID:
        raise BadPayload(f"payload.{name} is malformed")
    return value


def _history_id(started: ev.SequenceStarted) -> int | None:
    if not started.HasField("history_id"):
        return None
    if started.history_id > _MAX_HISTORY_ID:
        raise BadPayload("payload.history_id is malformed")
    return started.history_id


# -- events ---------------------------------------------------------------------------------------------
def watch_sequence(conn: Connection, user_id: str, started: ev.SequenceStarted) -> None:
    """``sequence.started``: watch the sequence's thread; start (never rewind) the user's cursor."""
    sequence_id = _text(started.sequence_id, "sequence_id")
    thread_id = _text(started.thread_id, "thread_id")
    contact_id = _text(started.contact_id, "contact_id")
    history_id = _history_id(started)
    email = _text(started.user_email, "user_email", required=False).lower()
    stmt = insert(mailboxes).values(user_id=user_id, email=email, history_id=history_id, paused=False,
                                    due_at=func.now(), failures=0, created_at=func.now())
    cursor = conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["user_id"],
            set_={
                "paused": False,
                "email": func.coalesce(func.nullif(stmt.excluded.email, ""), mailboxes.c.email),
                "history_id": func.coalesce(mailboxes.c.history_id, stmt.excluded.history_id),
            },
        ).returning(mailboxes.c.history_id)
    ).scalar_one()
    # The cursor may already be past this sequence's start (the poller ran before the event came):
    # the thread is then read once with threads.get instead of rewinding the cursor.
    recheck = history_id is None or (cursor is not None and int(cursor) > history_id)
    conn.execute(
        insert(watches)
        .values(user_id=user_id, sequence_id=sequence_id, contact_id=contact_id,
                contact_email=_text(started.contact_email, "contact_email", required=False), thread_id=thread_id,
                needs_recheck=recheck, created_at=func.now())
        .on_conflict_do_nothing(index_elements=["user_id", "sequence_id"])
    )


def record_sent(conn: Connection, user_id: str, sent: ev.SequenceMessageSent) -> None:
    """``sequence.message_sent``: remember one of our own message ids (it never counts as a reply)."""
    message_id = _text(sent.message_id, "message_id")
    conn.execute(
        insert(sent_messages)
        .values(user_id=user_id, message_id=message_id, thread_id=_text(sent.thread_id, "thread_id"),
                sequence_id=_text(sent.sequence_id, "sequence_id"), created_at=func.now())
        .on_conflict_do_nothing(index_elements=["user_id", "message_id"])
    )
    conn.execute(
        update(seen_messages)
        .where(seen_messages.c.message_id == message_id, seen_messages.c.outcome == "pending_sent")
        .values(outcome="own", decided_at=func.now())
    )


def unwatch_sequence(conn: Connection, user_id: str, stopped: ev.SequenceStopped, tombstone_key: bytes) -> None:
    """``sequence.stopped``: stop watching its thread; forget the mailbox when nothing is left. A contact's
    deletion (``contact_deleted``) also forgets the access-log entries about the sequence and its thread."""
    sequence_id = _text(stopped.sequence_id, "sequence_id")
    threads = conn.execute(delete(watches).where(watches.c.user_id == user_id, watches.c.sequence_id == sequence_id)
                           .returning(watches.c.thread_id)).scalars().all()
    if stopped.reason == "contact_deleted":
        forget_sequences(conn, SCHEMA, tombstone_key, user_id, [sequence_id], threads)
    _drop_mailbox_if_idle(conn, user_id)


def _drop_mailbox_if_idle(conn: Connection, user_id: str) -> bool:
    """Forget the mailbox once no sequence of the user is live; its Gmail watch is queued for a stop."""
    # ``mailboxes`` is open to system scope (the schedule): always name the user explicitly.
    if conn.execute(select(watches.c.sequence_id).where(watches.c.user_id == user_id).limit(1)).first() is None:
        gone = conn.execute(delete(mailboxes).where(mailboxes.c.user_id == user_id)
                            .returning(mailboxes.c.watch_expires_at)).first()
        if gone is not None and _holds_watch(gone.watch_expires_at):
            queue_stop(conn, user_id)
        return True
    return False


def _holds_watch(expires_at: dt.datetime | None) -> bool:
    return expires_at is not None and expires_at > dt.datetime.now(dt.UTC)


def pause(conn: Connection, user_id: str) -> bool:
    """``gmail.disconnected``: stop polling the user until ``gmail.connected``, and queue the stop of
    the Gmail watch (True when one was queued). The vault may have revoked the grant already: the stop
    then fails for want of a grant, which counts as done (the watch ended with the grant)."""
    held = conn.execute(select(mailboxes.c.watch_expires_at).where(mailboxes.c.user_id == user_id)
                        .with_for_update()).first()
    if held is None:
        return False
    # watch_due_at now: once resumed, the mailbox is watched again at once.
    conn.execute(update(mailboxes).where(mailboxes.c.user_id == user_id)
                 .values(paused=True, watch_expires_at=None, watch_due_at=func.now()))
    if _holds_watch(held.watch_expires_at):
        queue_stop(conn, user_id)
        return True
    return False


def resume(conn: Connection, user_id: str, connected: ev.GmailConnected) -> None:
    """``gmail.connected``: poll again at once (the cursor still holds, or a 404 re-checks), and watch
    the mailbox again at once.

    A different Google account is another mailbox: the old one's cursor, threads and message ids mean
    nothing there, so everything the watcher knew of the user goes (the mailer stops the old account's
    sequences with ``gmail_account_changed``). A stop still queued for the old mailbox goes too: the
    only token now is the new account's, and the old watch ends with the old grant or within 7 days
    (its pushes name an address nobody watches, so they do nothing).
    """
    email = _text(connected.email, "email", required=False).lower()
    # Locked first, as in purge_user: a poll committing meanwhile cannot leave outcomes behind.
    known = conn.execute(select(mailboxes.c.email).where(mailboxes.c.user_id == user_id)
                         .with_for_update()).scalar_one_or_none()
    if known and email and known.lower() != email:
        forget_mailbox(conn, user_id)
        conn.execute(delete(watch_stops).where(watch_stops.c.user_id == user_id, watch_stops.c.deletion_id.is_(None)))
        log.info("gmail account changed; watcher state reset")
        return
    values: dict = {"paused": False, "due_at": func.now(), "failures": 0, "watch_due_at": func.now(),
                    "watch_failures": 0, "watch_error": None}
    if email:
        values["email"] = email
    conn.execute(update(mailboxes).where(mailboxes.c.user_id == user_id).values(**values))


def forget_mailbox(conn: Connection, user_id: str) -> dict[str, int]:
    """Delete every row the watcher keeps about the user's mailbox; the counts per table."""
    return {table.name: conn.execute(delete(table).where(table.c.user_id == user_id)).rowcount
            for table in (watches, sent_messages, seen_messages, mailboxes)}


def purge_user(conn: Connection, user_id: str, requested: ev.AccountDeletionRequested, tombstone_key: bytes) -> bool:
    """``account.deletion_requested``: bury the user, delete every row, then report ``account.purged``.

    The tombstone makes the consumer drop any later event of the user (a ``sequence.started`` relayed
    after this purge would otherwise bring rows back). Idempotent: a second delivery deletes nothing
    and reports again (accounts counts a service once).

    When the mailbox holds a Gmail watch (or a stop is still queued), the report waits for the stop:
    the grant is still valid now (the vault revokes after the mailer's report), but Gmail is never called
    inside this transaction, so only the user id and the deletion id stay behind in ``watch_stops``,
    and the loop's ``finish_stop`` reports once the watch is stopped (or after bounded attempts).
    Returns True when the stop was queued.
    """
    deletion_id = _text(requested.deletion_id, "deletion_id")
    bury(conn, SCHEMA, tombstone_key, user_id)
    # The mailbox row first: a poll committing meanwhile holds it (commit_poll locks it before writing),
    # so its outcomes are either committed before the deletes below see them, or never written.
    box = conn.execute(select(mailboxes.c.watch_expires_at).where(mailboxes.c.user_id == user_id)
                       .with_for_update()).first()
    queued = conn.execute(select(watch_stops.c.user_id).where(watch_stops.c.user_id == user_id)).first()
    counts = forget_mailbox(conn, user_id)
    counts["gmail_access"] = purge_access_log(conn, SCHEMA, user_id)
    # The dedupe records and relayed events of the user go too (the consumer runs in system scope).
    forget_user(conn, SCHEMA, user_id)
    deleted = {f"deleted_{k}": v for k, v in counts.items()}
    if (box is not None and _holds_watch(box.watch_expires_at)) or queued is not None:
        queue_stop(conn, user_id, deletion_id)
        log.info("user purged; reporting once the Gmail watch is stopped",
                 extra={"deletion_id": deletion_id, **deleted})
        return True
    publish_in_tx(conn, SCHEMA, user_id, ev.AccountPurged(deletion_id=deletion_id, service=SERVICE))
    log.info("user purged", extra={"deletion_id": deletion_id, **deleted})
    return False


def queue_stop(conn: Connection, user_id: str, deletion_id: str | None = None) -> None:
    """Queue ``users.stop`` for the user (idempotent); with ``deletion_id``, report that deletion once
    the stop is done."""
    stmt = insert(watch_stops).values(user_id=user_id, deletion_id=deletion_id, attempts=0, due_at=func.now(),
                                      created_at=func.now())
    if deletion_id:
        conn.execute(stmt.on_conflict_do_update(index_elements=["user_id"],
                                                set_={"deletion_id": deletion_id, "attempts": 0, "due_at": func.now()}))
    else:
        conn.execute(stmt.on_conflict_do_nothing(index_elements=["user_id"]))


# -- gRPC helpers ---------------------------------------------------------------------------------------
def schedule_check(engine: Engine, email: str, history_id: int | None = None) -> bool:
    """A Gmail push named ``email`` (and the mailbox's ``history_id`` after the change): make that
    mailbox due now. False when nobody watches it, or when its cursor is already at or past
    ``history_id`` (a duplicate, late or out-of-order push: what it announces has been read).

    Pushes coalesce: however many arrive before the poll claims the mailbox, it is read once; one that
    arrives while a poll is in flight is remembered (``pushed_history_id``), and the poll's commit reads
    again at once only if that history id is past what the poll read.
    """
    address = email.strip().lower()
    if not address or len(address) > 320:
        return False
    stmt = update(mailboxes).where(func.lower(mailboxes.c.email) == address, mailboxes.c.paused.is_(False))
    if history_id is not None:
        history_id = min(history_id, _MAX_HISTORY_ID)
        stmt = stmt.where(or_(mailboxes.c.history_id.is_(None), mailboxes.c.history_id < history_id))
        pushed: ColumnElement | int = history_id
    else:
        pushed = func.coalesce(mailboxes.c.history_id, 0) + 1  # anything past what has been read
    with system_tx(engine) as conn:
        touched = conn.execute(stmt.values(**_push_values(pushed))).rowcount
    return bool(touched)


def _push_values(history_id: ColumnElement | int) -> dict:
    """What a push (or a new watch) changes on the mailbox: due now, unless a poll is in flight (its
    commit reads again if needed) or the mailbox is backing off after failed polls."""
    in_flight = and_(mailboxes.c.claimed_at.is_not(None), mailboxes.c.due_at > func.now())
    return {
        "pushed_at": func.now(),
        "pushed_history_id": func.greatest(func.coalesce(mailboxes.c.pushed_history_id, 0), history_id),
        "due_at": case((or_(in_flight, mailboxes.c.failures > 0), mailboxes.c.due_at),
                       else_=func.least(mailboxes.c.due_at, func.now())),
    }


def export_replies(engine: Engine, user_id: str, batch: int = 500) -> Iterator[dict]:
    """The user's detected replies, bounces and takeovers, oldest first (ids, kind and time only)."""
    with user_tx(engine, user_id) as conn:
        rows = conn.execution_options(yield_per=batch).execute(
            select(seen_messages.c.outcome, seen_messages.c.decided_at, seen_messages.c.thread_id,
                   seen_messages.c.message_id, seen_messages.c.contact_id)
            .where(seen_messages.c.outcome.in_(DETECTIONS))
            .order_by(seen_messages.c.decided_at, seen_messages.c.message_id)
        )
        for row in rows:
            yield {
                "kind": row.outcome,
                "detected_at": _iso(row.decided_at),
                "thread_id": row.thread_id,
                "message_id": row.message_id,
                "contact_id": row.contact_id,
            }


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


# -- the poll -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Watch:
    sequence_id: str
    contact_id: str
    thread_id: str
    needs_recheck: bool


@dataclass(frozen=True)
class Pending:
    message_id: str
    thread_id: str
    seen_at: dt.datetime


@dataclass
class MailboxState:
    user_id: str
    email: str
    cursor: int | None
    watches: list[Watch]
    pending: list[Pending] = field(default_factory=list)

    @property
    def threads(self) -> set[str]:
        return {w.thread_id for w in self.watches}

    @property
    def recheck_threads(self) -> set[str]:
        return {w.thread_id for w in self.watches if w.needs_recheck}


@dataclass(frozen=True)
class Decision:
    message_id: str
    thread_id: str
    outcome: str  # reply, bounce, takeover, own, self, gone, pending_sent
    was_pending: bool = False


def _claim(engine: Engine, table: Table, due_column: Column[Any], conditions: list[Any], limit: int,
           lease_s: float, returning: list[Column[Any]], **values: Any) -> list[Any]:
    """Lease the first ``limit`` rows of ``table`` meeting ``conditions`` (oldest ``due_column`` first,
    skipping rows another process holds): ``due_column`` moves ``lease_s`` ahead, so other processes skip
    them until this one is done or dies. Returns the ``returning`` columns of the claimed rows."""
    key = table.c.user_id
    due = (select(key).where(*conditions).order_by(due_column).limit(limit)
           .with_for_update(skip_locked=True).cte(f"{table.name}_due"))
    with system_tx(engine) as conn:
        return list(conn.execute(
            update(table).where(key == due.c.user_id)
            .values({due_column.name: func.now() + dt.timedelta(seconds=lease_s), **values})
            .returning(*returning)
        ).all())


def claim_due(engine: Engine, limit: int, lease_s: float, watching: bool = False) -> list[str]:
    """Claim up to ``limit`` due mailboxes for this process: their ``due_at`` moves ``lease_s`` ahead,
    so other watcher processes skip them (and take them again if this one dies mid-poll).

    With push on (``watching``), a mailbox waiting for its first watch is left to it: the read that a new
    watch asks for is its first poll (a failed watch makes it polled on the normal interval)."""
    if limit <= 0:
        return []
    conditions = [~mailboxes.c.paused, mailboxes.c.due_at <= func.now()]
    if watching:
        conditions.append(or_(mailboxes.c.watch_expires_at.is_not(None), mailboxes.c.watch_failures > 0))
    rows = _claim(engine, mailboxes, mailboxes.c.due_at, conditions, limit, lease_s, [mailboxes.c.user_id],
                  claimed_at=func.now())
    return [r.user_id for r in rows]


def next_due_in(engine: Engine) -> float | None:
    """Seconds until the next mailbox falls due (None when none is watched)."""
    with system_tx(engine) as conn:
        value = conn.execute(
            select(func.extract("epoch", func.min(mailboxes.c.due_at) - func.now())).where(~mailboxes.c.paused)
        ).scalar()
    return None if value is None else max(0.0, float(value))


def load_state(engine: Engine, user_id: str) -> MailboxState | None:
    with user_tx(engine, user_id) as conn:
        box = conn.execute(
            select(mailboxes.c.email, mailboxes.c.history_id).where(mailboxes.c.user_id == user_id)
        ).first()
        if box is None:
            return None
        rows = conn.execute(
            select(watches.c.sequence_id, watches.c.contact_id, watches.c.thread_id, watches.c.needs_recheck)
        ).all()
        pending = conn.execute(
            select(seen_messages.c.message_id, seen_messages.c.thread_id, seen_messages.c.seen_at)
            .where(seen_messages.c.outcome == "pending_sent")
        ).all()
    return MailboxState(
        user_id,
        box.email,
        None if box.history_id is None else int(box.history_id),
        [Watch(r.sequence_id, r.contact_id, r.thread_id, r.needs_recheck) for r in rows],
        [Pending(p.message_id, p.thread_id, p.seen_at) for p in pending],
    )


def quiet_cursor(engine: Engine, user_id: str) -> int | None:
    """The cursor of a mailbox whose poll is only the safety net's: its Gmail watch holds (the last
    attempt succeeded), no push waits to be read, no thread needs a re-check and no SENT message waits
    for its takeover grace. None otherwise (the poll then reads history as usual)."""
    with user_tx(engine, user_id) as conn:
        cursor = conn.execute(
            select(mailboxes.c.history_id).where(
                mailboxes.c.user_id == user_id,
                mailboxes.c.history_id.is_not(None),
                mailboxes.c.watch_expires_at > func.now(),
                mailboxes.c.watch_failures == 0,
                mailboxes.c.pushed_history_id.is_(None),
                exists().where(watches.c.user_id == user_id),
                ~exists().where(watches.c.user_id == user_id, watches.c.needs_recheck),
                ~exists().where(seen_messages.c.user_id == user_id, seen_messages.c.outcome == "pending_sent"),
            )
        ).scalar()
    return None if cursor is None else int(cursor)


def commit_quiet(engine: Engine, user_id: str, interval_s: float, fallback_s: float | None) -> bool:
    """A safety-net poll found nothing new (the mailbox's history has not moved): schedule the next one.
    True when the mailbox is due again at once (a push came during the check)."""
    with system_tx(engine) as conn:
        again = conn.execute(update(mailboxes).where(mailboxes.c.user_id == user_id).values(
            due_at=_next_due(func.coalesce(mailboxes.c.history_id, 0), interval_s, fallback_s, None),
            failures=0, last_polled_at=func.now(), claimed_at=None, pushed_at=None, pushed_history_id=None,
        ).returning(mailboxes.c.due_at <= func.now())).scalar()
    return bool(again)


def known_ids(engine: Engine, user_id: str, message_ids: Iterable[str]) -> tuple[set[str], set[str]]:
    """Of ``message_ids``: those already decided, and those CoffeePing sent."""
    ids = list(message_ids)
    if not ids:
        return set(), set()
    with user_tx(engine, user_id) as conn:
        seen = set(conn.execute(
            select(seen_messages.c.message_id)
            .where(seen_messages.c.message_id.in_(ids), seen_messages.c.outcome != "pending_sent")
        ).scalars())
        ours = set(conn.execute(select(sent_messages.c.message_id).where(sent_messages.c.message_id.in_(ids)))
                   .scalars())
    return seen, ours


def commit_poll(
    engine: Engine,
    user_id: str,
    decisions: list[Decision],
    new_cursor: int | None,
    rechecked_threads: set[str],
    interval_s: float,
    fallback_s: float | None = None,
    soon_s: float | None = None,
) -> tuple[list[dict], bool]:
    """Record the outcomes, publish one detection per contact, advance the cursor; one transaction.

    The next poll is due after ``interval_s``, or ``fallback_s`` (push on) while a Gmail watch holds
    and its last attempt succeeded; after ``soon_s`` at the latest (a SENT message waits for its
    takeover grace); at once when a push arrived during this poll naming a history id past what it
    read. Returns the published events (type and payload), and whether the mailbox is due again at once.
    """
    published: list[dict] = []
    with user_tx(engine, user_id, system=True) as conn:
        locked = select(mailboxes.c.user_id).where(mailboxes.c.user_id == user_id).with_for_update()
        if conn.execute(locked).first() is None:
            return published, False  # purged or unwatched meanwhile: write nothing back
        by_thread: dict[str, list] = {}
        if decisions:
            for row in conn.execute(select(watches.c.sequence_id, watches.c.contact_id, watches.c.thread_id)):
                by_thread.setdefault(row.thread_id, []).append(row)
        detected: dict[str, Decision] = {}
        for decision in decisions:
            contact = by_thread[decision.thread_id][0].contact_id if decision.thread_id in by_thread else None
            if not _record(conn, user_id, decision, contact):
                continue  # decided already (another poll, or the mailer's event won the race)
            if decision.outcome in DETECTIONS and contact is not None and contact not in detected:
                detected[contact] = decision
        now = dt.datetime.now(dt.UTC)
        for contact_id, decision in detected.items():
            sequence_ids = sorted(conn.execute(
                delete(watches).where(watches.c.contact_id == contact_id).returning(watches.c.sequence_id)
            ).scalars())
            detection = DETECTION_FOR[decision.outcome](
                contact_id=contact_id, sequence_ids=sequence_ids, thread_id=decision.thread_id,
                message_id=decision.message_id, detected_at=now)
            publish_in_tx(conn, SCHEMA, user_id, detection)
            event_type, payload = encode_payload(detection)
            published.append({"type": event_type, "payload": payload})
        if rechecked_threads:
            conn.execute(update(watches).where(watches.c.thread_id.in_(sorted(rechecked_threads)))
                         .values(needs_recheck=False))
        if detected and _drop_mailbox_if_idle(conn, user_id):
            return published, False
        read_to = func.coalesce(mailboxes.c.history_id, 0)
        if new_cursor is not None:
            read_to = func.greatest(read_to, new_cursor)
        values: dict = {
            "due_at": _next_due(read_to, interval_s, fallback_s, soon_s),
            "failures": 0,
            "last_polled_at": func.now(),
            "claimed_at": None,
            "pushed_at": None,
            "pushed_history_id": None,
        }
        if new_cursor is not None:
            values["history_id"] = read_to
        again = conn.execute(update(mailboxes).where(mailboxes.c.user_id == user_id).values(**values)
                             .returning(mailboxes.c.due_at <= func.now())).scalar()
    return published, bool(again)


def _next_due(read_to: ColumnElement, interval_s: float, fallback_s: float | None,
              soon_s: float | None) -> ColumnElement:
    """When the mailbox falls due after a poll that read its history up to ``read_to`` (SQL on the row's
    values before the update)."""
    interval = dt.timedelta(seconds=interval_s)
    after: ColumnElement
    if fallback_s is None:
        after = func.now() + interval
    else:
        watched = and_(mailboxes.c.watch_expires_at > func.now(), mailboxes.c.watch_failures == 0)
        after = func.now() + case((watched, dt.timedelta(seconds=fallback_s)), else_=interval)
    if soon_s is not None:
        after = func.least(after, func.now() + dt.timedelta(seconds=soon_s))
    # A push that came while this poll was in flight, naming a change past what the poll read.
    unread_push = and_(mailboxes.c.pushed_history_id > read_to, mailboxes.c.pushed_at >= mailboxes.c.claimed_at)
    return case((unread_push, func.now()), else_=after)


def _record(conn: Connection, user_id: str, decision: Decision, contact_id: str | None) -> bool:
    """Store one outcome unless the message was decided already; True if this call decided it."""
    if decision.was_pending:
        # A pending SENT message becomes a takeover only if the mailer still has not claimed it.
        condition = [seen_messages.c.message_id == decision.message_id, seen_messages.c.outcome == "pending_sent"]
        if decision.outcome == "takeover":
            condition.append(~exists().where(and_(sent_messages.c.message_id == decision.message_id)))
        changed = conn.execute(
            update(seen_messages).where(*condition)
            .values(outcome=decision.outcome, contact_id=contact_id, decided_at=func.now())
        ).rowcount
        return bool(changed)
    row = conn.execute(
        insert(seen_messages)
        .values(message_id=decision.message_id, thread_id=decision.thread_id, outcome=decision.outcome,
                contact_id=contact_id, seen_at=func.now(), decided_at=func.now(), user_id=user_id)
        .on_conflict_do_nothing(index_elements=["user_id", "message_id"])
        .returning(seen_messages.c.message_id)
    ).first()
    return row is not None and decision.outcome != "pending_sent"


def reschedule(engine: Engine, user_id: str, delay_s: float, failed: bool) -> None:
    """Put a mailbox back on the schedule after a poll that could not finish (a push that came
    meanwhile stays remembered: the next poll reads it)."""
    with system_tx(engine) as conn:
        conn.execute(
            update(mailboxes).where(mailboxes.c.user_id == user_id)
            .values(due_at=func.now() + dt.timedelta(seconds=delay_s), claimed_at=None,
                    failures=mailboxes.c.failures + (1 if failed else 0))
        )


def failures_of(engine: Engine, user_id: str) -> int:
    with system_tx(engine) as conn:
        return int(conn.execute(select(mailboxes.c.failures).where(mailboxes.c.user_id == user_id)).scalar() or 0)


# -- Gmail push: watches and stops ---------------------------------------------------------------------
def claim_watches(engine: Engine, limit: int, lease_s: float) -> list[str]:
    """Claim up to ``limit`` mailboxes whose watch must be made or renewed (a lease, as ``claim_due``)."""
    if limit <= 0:
        return []
    rows = _claim(engine, mailboxes, mailboxes.c.watch_due_at,
                  [~mailboxes.c.paused, mailboxes.c.watch_due_at <= func.now()], limit, lease_s, [mailboxes.c.user_id])
    return [r.user_id for r in rows]


def renewal_time(expires_at: dt.datetime, now: dt.datetime | None = None) -> dt.datetime:
    """When to renew a watch that expires at ``expires_at``: a day before, or halfway there when the
    watch has less than two days left."""
    left = expires_at - (now or dt.datetime.now(dt.UTC))
    return expires_at - min(RENEW_BEFORE, max(left / 2, dt.timedelta(0)))


def commit_watch(engine: Engine, user_id: str, expires_at: dt.datetime, history_id: int | None,
                 tombstone_key: bytes) -> bool:
    """Record a watch Gmail accepted: its expiry and renewal time, no failures. A new watch (none held,
    or the last one expired) also makes the mailbox read once up to the watch's ``history_id``, so a
    change that came before the watch does not wait for the fallback. The history id also starts a
    cursor that has none (never moves one).

    False when the mailbox went, or was paused, while Gmail answered: the watch is then queued for a
    stop at once, unless the user was deleted (their grant is being revoked, which ends the watch).
    """
    new = or_(mailboxes.c.watch_expires_at.is_(None), mailboxes.c.watch_expires_at <= func.now())
    values: dict = {"watch_expires_at": expires_at, "watch_due_at": renewal_time(expires_at),
                    "watch_failures": 0, "watch_error": None}
    if history_id is not None and 0 < history_id <= _MAX_HISTORY_ID:
        values["history_id"] = func.coalesce(mailboxes.c.history_id, history_id)
        for key, value in _push_values(history_id).items():
            values[key] = case((new, value), else_=mailboxes.c[key])
    with user_tx(engine, user_id, system=True) as conn:
        row = conn.execute(update(mailboxes).where(mailboxes.c.user_id == user_id, ~mailboxes.c.paused)
                           .values(**values).returning(mailboxes.c.user_id)).first()
        if row is None:
            if not is_buried(conn, SCHEMA, tombstone_key, user_id):
                queue_stop(conn, user_id)
            return False
    return True


def watch_failed(engine: Engine, user_id: str, reason: str, base_s: float, cap_s: float, interval_s: float,
                 delay_s: float | None = None) -> float | None:
    """Record a failed ``users.watch``: retry it with exponential backoff (``base_s`` doubling up to
    ``cap_s``, at least ``delay_s``), and poll the mailbox on the normal interval meanwhile (a watch that
    cannot be renewed may lapse). The delay, or None when the mailbox is gone."""
    with user_tx(engine, user_id, system=True) as conn:
        failures = conn.execute(select(mailboxes.c.watch_failures).where(mailboxes.c.user_id == user_id)
                                .with_for_update()).scalar()
        if failures is None:
            return None
        delay = min(base_s * 2 ** min(int(failures), 30), cap_s)
        if delay_s is not None:
            delay = max(delay, delay_s)
        soon = func.now() + dt.timedelta(seconds=interval_s)
        conn.execute(update(mailboxes).where(mailboxes.c.user_id == user_id).values(
            watch_failures=mailboxes.c.watch_failures + 1, watch_error=reason[:64],
            watch_due_at=func.now() + dt.timedelta(seconds=delay),
            # Not while a poll holds its lease: its commit picks the interval itself.
            due_at=case((mailboxes.c.claimed_at.is_(None), func.least(mailboxes.c.due_at, soon)),
                        else_=mailboxes.c.due_at)))
    return delay


@dataclass(frozen=True)
class StopItem:
    user_id: str
    deletion_id: str | None
    attempts: int


def claim_stops(engine: Engine, limit: int, lease_s: float) -> list[StopItem]:
    """Claim up to ``limit`` queued stops whose time has come (a lease, as ``claim_due``)."""
    if limit <= 0:
        return []
    rows = _claim(engine, watch_stops, watch_stops.c.due_at, [watch_stops.c.due_at <= func.now()], limit, lease_s,
                  [watch_stops.c.user_id, watch_stops.c.deletion_id, watch_stops.c.attempts])
    return [StopItem(r.user_id, r.deletion_id, r.attempts) for r in rows]


def wants_watch(engine: Engine, user_id: str) -> bool:
    """The user has a mailbox being watched again (a new sequence, a reconnection) since the stop was
    queued: the stop must not run."""
    with user_tx(engine, user_id, system=True) as conn:
        return conn.execute(select(mailboxes.c.user_id)
                            .where(mailboxes.c.user_id == user_id, ~mailboxes.c.paused)).first() is not None


def finish_stop(engine: Engine, user_id: str, called_gmail: bool) -> str | None:
    """The stop is done (or given up): drop it, and report ``account.purged`` for the deletion that
    queued it (its id is returned). If the mailbox is watched again meanwhile, a stop that reached Gmail
    may have ended the new watch: it is made again at once."""
    with user_tx(engine, user_id, system=True) as conn:
        row = conn.execute(delete(watch_stops).where(watch_stops.c.user_id == user_id)
                           .returning(watch_stops.c.deletion_id)).first()
        if row is not None and row.deletion_id:
            publish_in_tx(conn, SCHEMA, user_id, ev.AccountPurged(deletion_id=row.deletion_id, service=SERVICE))
            return str(row.deletion_id)
        if called_gmail:
            conn.execute(update(mailboxes)
                         .where(mailboxes.c.user_id == user_id, ~mailboxes.c.paused,
                                mailboxes.c.watch_expires_at.is_not(None))
                         .values(watch_expires_at=None, watch_due_at=func.now()))
    return None


def retry_stop(engine: Engine, user_id: str, delay_s: float) -> None:
    with system_tx(engine) as conn:
        conn.execute(update(watch_stops).where(watch_stops.c.user_id == user_id)
                     .values(attempts=watch_stops.c.attempts + 1,
                             due_at=func.now() + dt.timedelta(seconds=delay_s)))


def dumps(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
