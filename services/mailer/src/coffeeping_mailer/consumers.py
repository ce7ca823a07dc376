"""What the mailer does on other services' events (docs/EVENTS.md).

Each handler runs inside the consumer's transaction (``user_tx(user, system=True)``), after the event
id was recorded in the inbox; it must be idempotent, since an event can come again after a crash.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterable

from sqlalchemy import Connection, bindparam, func, select

from coffeeping.common.messaging import Event, Handler
from coffeeping.events.v1 import events_pb2 as ev
from coffeeping_mailer import fence
from coffeeping_mailer.gmail_api import Gmail
from coffeeping_mailer.lifecycle import pause_all, stop_sequence
from coffeeping_mailer.models import sequences

log = logging.getLogger("coffeeping_mailer.consumers")

_UNFINISHED = ("scheduled", "active", "paused")
Detection = ev.ReplyDetected | ev.BounceDetected | ev.TakeoverDetected
_STOP_REASONS: dict[type[Detection], str] = {
    ev.ReplyDetected: "replied", ev.BounceDetected: "bounced", ev.TakeoverDetected: "user_took_over"}

# The statements, built once (a statement object memoises its cache key).
_UNFINISHED_OF = select(sequences.c.id).where(
    sequences.c.status.in_(_UNFINISHED),
    sequences.c.contact_id.in_(bindparam("p_contacts", expanding=True, type_=sequences.c.contact_id.type))
    | sequences.c.id.in_(bindparam("p_sequences", expanding=True, type_=sequences.c.id.type)))
_OTHER_ACCOUNT = select(sequences.c.id).where(
    sequences.c.status.in_(_UNFINISHED), sequences.c.user_email.is_not(None),
    func.lower(sequences.c.user_email) != func.lower(bindparam("p_email", type_=sequences.c.user_email.type)))


def _uuids(values: Iterable[str]) -> list[uuid.UUID]:
    out = []
    for value in values:
        try:
            out.append(uuid.UUID(value))
        except ValueError:
            continue
    return out


def make_handler(gmail: Gmail, tombstone_key: bytes, draft_cleanup_s: float = 900.0) -> Handler:
    """The consumer's handler; ``gmail`` forgets a user's cached tokens when their account changes."""

    def handle(conn: Connection, event: Event) -> None:
        user = event.user_id
        match event.message:
            case ev.ReplyDetected() | ev.BounceDetected() | ev.TakeoverDetected() as detection:
                stop(conn, user, detection, _STOP_REASONS[type(detection)])
            case ev.GmailConnected() as connected:
                if account_changed(conn, user, connected.email):
                    gmail.forget(user)
            case ev.GmailDisconnected():
                paused = pause_all(conn, "gmail_disconnected")
                log.info("sequences paused: gmail disconnected", extra={"count": paused})
            case ev.AccountDeletionRequested() as requested:
                # The draft cleaner reports ``account.purged`` once the drafts are removed or given up.
                fence.purge(conn, tombstone_key, user, requested.deletion_id, draft_cleanup_s)

    return handle


def stop(conn: Connection, user: str, detection: Detection, reason: str) -> None:
    """Stop the contact's running sequences (a reply in any of its threads counts) and named ones."""
    contact_ids = _uuids([detection.contact_id])
    sequence_ids = _uuids(detection.sequence_ids)
    ids = conn.execute(_UNFINISHED_OF, {"p_contacts": contact_ids, "p_sequences": sequence_ids}).scalars().all()
    when = detection.detected_at.ToDatetime(tzinfo=dt.UTC) if detection.HasField("detected_at") else None
    for seq_id in ids:
        stop_sequence(conn, user, seq_id, reason, when)
    log.info("sequences stopped", extra={"reason": reason, "count": len(ids)})


def account_changed(conn: Connection, user: str, email: str) -> bool:
    """``gmail.connected``: a Google account other than the one a running sequence wrote from stops it
    with ``gmail_account_changed`` (its thread and drafts are in the other mailbox). True if any."""
    if not email:
        return False
    ids = conn.execute(_OTHER_ACCOUNT, {"p_email": email}).scalars().all()
    for seq_id in ids:
        stop_sequence(conn, user, seq_id, "gmail_account_changed", None)
    if ids:
        log.info("sequences stopped: gmail account changed", extra={"count": len(ids)})
    return bool(ids)
