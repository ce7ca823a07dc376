"""What the mailer does on other services' events (docs/EVENTS.md).

Each handler runs inside the consumer's transaction (``user_tx(user, system=True)``), after the event
id was recorded in the inbox; it must be idempotent, since an event can come again after a crash.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import Connection, text

from coffeeping.common.messaging import forget_user, publish_in_tx
from coffeeping_mailer import services
from coffeeping_mailer.gmail_api import Disconnected, Gmail, NotFound, Rejected
from coffeeping_mailer.models import SCHEMA
from coffeeping_mailer.scheduler import pause_all

log = logging.getLogger("coffeeping_mailer.consumers")

ROUTING_KEYS = ("reply.detected", "bounce.detected", "takeover.detected", "gmail.disconnected",
                "account.deletion_requested")
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


class Handlers:
    def __init__(self, gmail: Gmail) -> None:
        self.gmail = gmail

    def __call__(self, conn: Connection, event: dict[str, Any]) -> None:
        kind, user, payload = event["type"], event["user_id"], event.get("payload") or {}
        if kind in _STOP_REASONS:
            self.stop(conn, user, payload, _STOP_REASONS[kind])
        elif kind == "gmail.disconnected":
            paused = pause_all(conn, "gmail_disconnected")
            log.info("sequences paused: gmail disconnected", extra={"count": paused})
        elif kind == "account.deletion_requested":
            self.purge(conn, user, str(payload.get("deletion_id", "")))

    def stop(self, conn: Connection, user: str, payload: dict[str, Any], reason: str) -> None:
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

    def purge(self, conn: Connection, user: str, deletion_id: str) -> None:
        """Account deletion: drafts out of Gmail while the grant works, then every row of the user."""
        drafts = [r.draft_id for r in conn.execute(
            text(f"SELECT draft_id FROM {SCHEMA}.steps WHERE draft_id IS NOT NULL "
                 "AND status IN ('scheduled', 'sending') "
                 f"UNION SELECT draft_id FROM {SCHEMA}.draft_deletions WHERE user_id = :u"), {"u": user})]
        for draft_id in drafts:
            try:
                self.gmail.delete_draft(user, draft_id)
            except (NotFound, Rejected):
                continue
            except Disconnected:
                break  # the grant is gone already; nothing more can be removed from Gmail
        # Transient errors propagate: the consumer rolls back and the event comes again with backoff.
        conn.execute(text(f"DELETE FROM {SCHEMA}.jobs WHERE step_id IN (SELECT step_id FROM {SCHEMA}.jobs "
                          "WHERE user_id = :u FOR UPDATE SKIP LOCKED)"), {"u": user})
        conn.execute(text(f"DELETE FROM {SCHEMA}.draft_deletions WHERE user_id = :u"), {"u": user})
        conn.execute(text(f"DELETE FROM {SCHEMA}.contacts WHERE user_id = :u"), {"u": user})
        forget_user(conn, SCHEMA, user)
        conn.execute(text(f"DELETE FROM {SCHEMA}.outbox WHERE user_id = :u AND routing_key LIKE 'sequence.%'"),
                     {"u": user})
        self.gmail.forget(user)
        publish_in_tx(conn, SCHEMA, "account.purged", user, {"deletion_id": deletion_id, "service": "mailer"})
        log.info("account purged", extra={"drafts": len(drafts)})
