"""What the reply watcher does with its state, independent of how it is called.

Event handlers (``watch_sequence`` ...) run inside the consumer's transaction for one user. The poll
keeps its database work short: ``claim_due`` (system scope, a lease on each claimed mailbox),
``load_state`` before talking to Gmail, and ``commit_poll`` after, in one transaction that records every
outcome, publishes the detections through the outbox and advances the cursor (never backwards).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, and_, delete, exists, func, select, update
from sqlalchemy.dialects.postgresql import insert

from coffeeping.common.db import system_tx, user_tx
from coffeeping.common.messaging import encode_payload, forget_user, publish_in_tx
from coffeeping.common.tombstones import bury
from coffeeping.events.v1 import events_pb2 as ev
from coffeeping_reply_watcher.models import DETECTIONS, mailboxes, seen_messages, sent_messages, watches

log = logging.getLogger(__name__)

SCHEMA = "watcher"
SERVICE = "reply-watcher"
DETECTION_FOR = {"reply": ev.ReplyDetected, "bounce": ev.BounceDetected, "takeover": ev.TakeoverDetected}
_MAX_ID = 256
_MAX_HISTORY_ID = 2**63 - 1  # the cursor is a bigint


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


def unwatch_sequence(conn: Connection, user_id: str, stopped: ev.SequenceStopped) -> None:
    """``sequence.stopped``: stop watching its thread; forget the mailbox when nothing is left."""
    conn.execute(delete(watches).where(watches.c.user_id == user_id,
                                       watches.c.sequence_id == _text(stopped.sequence_id, "sequence_id")))
    _drop_mailbox_if_idle(conn, user_id)


def _drop_mailbox_if_idle(conn: Connection, user_id: str) -> bool:
    # ``mailboxes`` is open to system scope (the schedule): always name the user explicitly.
    if conn.execute(select(watches.c.sequence_id).where(watches.c.user_id == user_id).limit(1)).first() is None:
        conn.execute(delete(mailboxes).where(mailboxes.c.user_id == user_id))
        return True
    return False


def pause(conn: Connection, user_id: str) -> None:
    """``gmail.disconnected``: stop polling the user until ``gmail.connected``."""
    conn.execute(update(mailboxes).where(mailboxes.c.user_id == user_id).values(paused=True))


def resume(conn: Connection, user_id: str, connected: ev.GmailConnected) -> None:
    """``gmail.connected``: poll again at once (the cursor still holds, or a 404 re-checks).

    A different Google account is another mailbox: the old one's cursor, threads and message ids mean
    nothing there, so everything the watcher knew of the user goes (the mailer stops the old account's
    sequences with ``gmail_account_changed``).
    """
    email = _text(connected.email, "email", required=False).lower()
    known = conn.execute(select(mailboxes.c.email).where(mailboxes.c.user_id == user_id)).scalar_one_or_none()
    if known and email and known.lower() != email:
        forget_mailbox(conn, user_id)
        log.info("gmail account changed; watcher state reset")
        return
    values: dict = {"paused": False, "due_at": func.now(), "failures": 0}
    if email:
        values["email"] = email
    conn.execute(update(mailboxes).where(mailboxes.c.user_id == user_id).values(**values))


def forget_mailbox(conn: Connection, user_id: str) -> dict[str, int]:
    """Delete every row the watcher keeps about the user's mailbox; the counts per table."""
    return {table.name: conn.execute(delete(table).where(table.c.user_id == user_id)).rowcount
            for table in (watches, sent_messages, seen_messages, mailboxes)}


def purge_user(conn: Connection, user_id: str, requested: ev.AccountDeletionRequested, tombstone_key: bytes) -> None:
    """``account.deletion_requested``: bury the user, delete every row, then report ``account.purged``.

    The tombstone makes the consumer drop any later event of the user (a ``sequence.started`` relayed
    after this purge would otherwise bring rows back). Idempotent: a second delivery deletes nothing
    and reports again (accounts counts a service once).
    """
    deletion_id = _text(requested.deletion_id, "deletion_id")
    bury(conn, SCHEMA, tombstone_key, user_id)
    counts = forget_mailbox(conn, user_id)
    # The dedupe records and relayed events of the user go too (the consumer runs in system scope).
    forget_user(conn, SCHEMA, user_id)
    publish_in_tx(conn, SCHEMA, user_id, ev.AccountPurged(deletion_id=deletion_id, service=SERVICE))
    log.info("user purged", extra={"deletion_id": deletion_id, **{f"deleted_{k}": v for k, v in counts.items()}})


# -- gRPC helpers ---------------------------------------------------------------------------------------
def schedule_check(engine: Engine, email: str) -> bool:
    """Make the mailbox of ``email`` due now (a Gmail push came). False when nobody watches it."""
    address = email.strip().lower()
    if not address or len(address) > 320:
        return False
    with system_tx(engine) as conn:
        touched = conn.execute(
            update(mailboxes)
            .where(func.lower(mailboxes.c.email) == address, mailboxes.c.paused.is_(False))
            .values(due_at=func.least(mailboxes.c.due_at, func.now()))
        ).rowcount
    return bool(touched)


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


def claim_due(engine: Engine, limit: int, lease_s: float) -> list[str]:
    """Claim up to ``limit`` due mailboxes for this process: their ``due_at`` moves ``lease_s`` ahead,
    so other watcher processes skip them (and take them again if this one dies mid-poll)."""
    if limit <= 0:
        return []
    due = (
        select(mailboxes.c.user_id)
        .where(~mailboxes.c.paused, mailboxes.c.due_at <= func.now())
        .order_by(mailboxes.c.due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("due")
    )
    with system_tx(engine) as conn:
        rows = conn.execute(
            update(mailboxes)
            .where(mailboxes.c.user_id == due.c.user_id)
            .values(due_at=func.now() + dt.timedelta(seconds=lease_s))
            .returning(mailboxes.c.user_id)
        ).all()
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
) -> list[dict]:
    """Record the outcomes, publish one detection per contact, advance the cursor; one transaction.

    Returns the published events (type and payload) for logging and tests.
    """
    published: list[dict] = []
    with user_tx(engine, user_id, system=True) as conn:
        locked = select(mailboxes.c.user_id).where(mailboxes.c.user_id == user_id).with_for_update()
        if conn.execute(locked).first() is None:
            return published  # purged or unwatched meanwhile: write nothing back
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
            return published
        values: dict = {
            "due_at": func.now() + dt.timedelta(seconds=interval_s),
            "failures": 0,
            "last_polled_at": func.now(),
        }
        if new_cursor is not None:
            values["history_id"] = func.greatest(func.coalesce(mailboxes.c.history_id, 0), new_cursor)
        conn.execute(update(mailboxes).where(mailboxes.c.user_id == user_id).values(**values))
    return published


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
    """Put a mailbox back on the schedule after a poll that could not finish."""
    with system_tx(engine) as conn:
        conn.execute(
            update(mailboxes).where(mailboxes.c.user_id == user_id)
            .values(due_at=func.now() + dt.timedelta(seconds=delay_s),
                    failures=mailboxes.c.failures + (1 if failed else 0))
        )


def failures_of(engine: Engine, user_id: str) -> int:
    with system_tx(engine) as conn:
        return int(conn.execute(select(mailboxes.c.failures).where(mailboxes.c.user_id == user_id)).scalar() or 0)


def dumps(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
