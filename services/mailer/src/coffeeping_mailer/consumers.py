"""What the mailer does on other services' events (docs/EVENTS.md).

Each handler runs inside the consumer's transaction (``user_tx(user, system=True)``), after the event
id was recorded in the inbox; it must be idempotent, since an event can come again after a crash.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import Connection, text

from coffeeping.common.messaging.consumer import Handler
from coffeeping_mailer import fence, services
from coffeeping_mailer.gmail_api import Gmail
from coffeeping_mailer.models import SCHEMA
from coffeeping_mailer.scheduler import pause_all

log = logging.getLogger("coffeeping_mailer.consumers")

_STOP_REASONS = {"reply.detected": "replied", "bounce.detected": "bounced", "takeover.detected": "user_took_over"}


def _when(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _uuids(values: Any) -> list[str]:
    import uuid

    out = []
    for value in values if isinstance(values, list) else [values]:
        try:
            out.append(str(uuid.UUID(str(value))))
        except ValueError:
            continue
    return out


def make_handler(gmail: Gmail, tombstone_key: bytes, draft_cleanup_s: float = 900.0) -> Handler:
    """The consumer's handler; ``gmail`` forgets a user's cached tokens when their account changes."""

    def handle(conn: Connection, event: dict[str, Any]) -> None:
        kind, user, payload = event["type"], event["user_id"], event.get("payload") or {}
        if kind in _STOP_REASONS:
            stop(conn, user, payload, _STOP_REASONS[kind])
        elif kind == "gmail.connected":
            if account_changed(conn, user, str(payload.get("email") or "")):
                gmail.forget(user)
        elif kind == "gmail.disconnected":
            paused = pause_all(conn, "gmail_disconnected")
            log.info("sequences paused: gmail disconnected", extra={"count": paused})
        elif kind == "account.deletion_requested":
            # The draft cleaner reports ``account.purged`` once the drafts are removed or given up.
            fence.purge(conn, tombstone_key, user, str(payload.get("deletion_id", "")), draft_cleanup_s)

    return handle


def stop(conn: Connection, user: str, payload: dict[str, Any], reason: str) -> None:
    """Stop the contact's running sequences (a reply in any of its threads counts) and named ones."""
    contacts = _uuids(payload.get("contact_id"))
    sequences = _uuids(payload.get("sequence_ids") or [])
    rows = conn.execute(
        text(f"SELECT id FROM {SCHEMA}.sequences WHERE status IN ('scheduled', 'active', 'paused') AND "
             "(contact_id = ANY(CAST(:c AS uuid[])) OR id = ANY(CAST(:s AS uuid[])))"),
        {"c": contacts, "s": sequences},
    ).all()
    when = _when(payload.get("detected_at"))
    for row in rows:
        services.stop_sequence(conn, user, str(row.id), reason, when)
    log.info("sequences stopped", extra={"reason": reason, "count": len(rows)})


def account_changed(conn: Connection, user: str, email: str) -> bool:
    """``gmail.connected``: a Google account other than the one a running sequence wrote from stops it
    with ``gmail_account_changed`` (its thread and drafts are in the other mailbox). True if any."""
    if not email:
        return False
    rows = conn.execute(
        text(f"SELECT id FROM {SCHEMA}.sequences WHERE status IN ('scheduled', 'active', 'paused') "
             "AND user_email IS NOT NULL AND lower(user_email) <> lower(:e)"), {"e": email}).all()
    for row in rows:
        services.stop_sequence(conn, user, str(row.id), "gmail_account_changed", None)
    if rows:
        log.info("sequences stopped: gmail account changed", extra={"count": len(rows)})
    return bool(rows)
