"""The mailer's part of an account deletion: the fence, the purge, and the bounded draft cleanup.

- **Fence.** ``fence`` buries the user in ``mailer.tombstones`` (accounts calls ``FenceUser`` before it
  answers 202; the ``account.deletion_requested`` event does the same). Every statement that lets a
  send or a draft go ahead carries ``FENCE_OPEN``, so the check is in the very transaction that commits
  to the Gmail call, immediately before it. A buried user's API calls answer ``account_deleted``.
- **Purge.** ``purge`` (the consumer's transaction) queues the Gmail draft of every unfinished step
  for deletion, deletes every row of the user at once, and records a pending purge.
- **Bounded cleanup.** The scheduler's draft cleaner removes the queued drafts, retrying Gmail's
  429/5xx with backoff until ``give_up_at`` (``MAILER_DRAFT_CLEANUP_S`` after the purge). Then
  ``finish_purges`` reports ``account.purged`` with the number of drafts it could not remove, and the
  vault revokes the grant: revocation never waits on Gmail for longer than that bound.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import Connection, Engine, text

from coffeeping.common.db import system_tx
from coffeeping.common.messaging import forget_user, publish_in_tx
from coffeeping.common.tombstones import bury, is_buried, subject
from coffeeping_mailer.models import SCHEMA

log = logging.getLogger(__name__)

ACCOUNT_DELETED = "account_deleted"
# The fence, for statements that commit to a send or a draft; bind ``fence`` with ``fence_param``.
FENCE_OPEN = f"NOT EXISTS (SELECT 1 FROM {SCHEMA}.tombstones WHERE subject = :fence)"


def fence_param(key: bytes, user_id: str) -> dict[str, bytes]:
    return {"fence": subject(key, user_id)}


def fence(engine: Engine, key: bytes, user_id: str) -> None:
    with system_tx(engine) as conn:
        bury(conn, SCHEMA, key, user_id)


def is_fenced(engine: Engine, key: bytes, user_id: str) -> bool:
    with system_tx(engine) as conn:
        return is_buried(conn, SCHEMA, key, user_id)


def queue_draft_deletions(conn: Connection, user_id: str, sequence_id: str | None = None,
                          give_up_at: dt.datetime | None = None) -> int:
    """Queue for deletion the Gmail draft of every unfinished follow-up (of one sequence, or all).

    Unfinished is any step not sent: scheduled, sending, failed or cancelled with its draft still
    recorded. A draft whose creation may have been interrupted before its id was recorded (the intent:
    our Message-ID, no draft id) is queued by thread and Message-ID, and the cleaner looks it up. The
    steps forget their draft ids, so that nothing is queued twice.
    """
    scope = "AND st.sequence_id = CAST(:s AS uuid)" if sequence_id else ""
    queued = conn.execute(
        text(
            f"INSERT INTO {SCHEMA}.draft_deletions (user_id, draft_id, thread_id, rfc_message_id, give_up_at) "
            "SELECT :u, st.draft_id, sq.thread_id, CASE WHEN st.draft_id IS NULL THEN st.rfc_message_id END, :g "
            f"FROM {SCHEMA}.steps st JOIN {SCHEMA}.sequences sq ON sq.id = st.sequence_id "
            f"WHERE st.position > 0 AND st.status <> 'sent' {scope} AND (st.draft_id IS NOT NULL "
            "OR (st.rfc_message_id IS NOT NULL AND sq.thread_id IS NOT NULL "
            "AND st.status IN ('scheduled', 'sending')))"
        ),
        {"u": user_id, "s": sequence_id, "g": give_up_at},
    ).rowcount
    if queued:
        conn.execute(text(f"UPDATE {SCHEMA}.steps st SET draft_id = NULL WHERE st.position > 0 "
                          f"AND st.status <> 'sent' AND st.draft_id IS NOT NULL {scope}"), {"s": sequence_id})
    return queued


def purge(conn: Connection, key: bytes, user_id: str, deletion_id: str, cleanup_s: float) -> int:
    """``account.deletion_requested``: bury the user, queue their drafts, delete their rows at once.

    Runs in the consumer's transaction and makes no Gmail call, so no Gmail outage can hold it back.
    Idempotent: a redelivery finds nothing left and records the purge again, so it reports again.
    Returns the number of drafts waiting for removal.
    """
    bury(conn, SCHEMA, key, user_id)
    give_up_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=cleanup_s)
    queue_draft_deletions(conn, user_id, give_up_at=give_up_at)
    conn.execute(text(f"UPDATE {SCHEMA}.draft_deletions SET give_up_at = :g WHERE user_id = :u "
                      "AND (give_up_at IS NULL OR give_up_at > :g)"), {"u": user_id, "g": give_up_at})
    conn.execute(text(f"DELETE FROM {SCHEMA}.jobs WHERE step_id IN (SELECT step_id FROM {SCHEMA}.jobs "
                      "WHERE user_id = :u FOR UPDATE SKIP LOCKED)"), {"u": user_id})
    conn.execute(text(f"DELETE FROM {SCHEMA}.contacts WHERE user_id = :u"), {"u": user_id})
    forget_user(conn, SCHEMA, user_id)
    conn.execute(text(f"DELETE FROM {SCHEMA}.outbox WHERE user_id = :u AND routing_key LIKE 'sequence.%'"),
                 {"u": user_id})
    drafts = conn.execute(text(f"SELECT count(*) FROM {SCHEMA}.draft_deletions WHERE user_id = :u"),
                          {"u": user_id}).scalar_one()
    conn.execute(
        text(f"INSERT INTO {SCHEMA}.purges (user_id, deletion_id, drafts_total) VALUES (:u, :d, :n) "
             "ON CONFLICT (user_id) DO UPDATE SET deletion_id = EXCLUDED.deletion_id"),
        {"u": user_id, "d": deletion_id, "n": drafts},
    )
    log.info("account purged; draft cleanup pending", extra={"deletion_id": deletion_id, "drafts": drafts})
    return int(drafts)


def count_left(conn: Connection, user_id: str) -> None:
    """A draft of a purged user that could not be removed (the purge reports the count)."""
    conn.execute(text(f"UPDATE {SCHEMA}.purges SET drafts_left = drafts_left + 1 WHERE user_id = :u"),
                 {"u": user_id})


def finish_purges(engine: Engine) -> list[str]:
    """Report ``account.purged`` for every purge whose drafts are all removed or given up; the users."""
    done: list[str] = []
    with system_tx(engine) as conn:
        rows = conn.execute(text(
            f"SELECT p.user_id, p.deletion_id, p.drafts_left FROM {SCHEMA}.purges p WHERE NOT EXISTS "
            f"(SELECT 1 FROM {SCHEMA}.draft_deletions d WHERE d.user_id = p.user_id) "
            "ORDER BY p.created_at LIMIT 20 FOR UPDATE SKIP LOCKED")).all()
        for row in rows:
            # A job a claimer still holds is dropped by its holder (its step is gone): wait for it.
            conn.execute(text(f"DELETE FROM {SCHEMA}.jobs WHERE step_id IN (SELECT step_id FROM {SCHEMA}.jobs "
                              "WHERE user_id = :u FOR UPDATE SKIP LOCKED)"), {"u": row.user_id})
            if conn.execute(text(f"SELECT 1 FROM {SCHEMA}.jobs WHERE user_id = :u LIMIT 1"),
                            {"u": row.user_id}).first():
                continue
            _report(conn, row)
            done.append(row.user_id)
    return done


def _report(conn: Connection, row: Any) -> None:
    publish_in_tx(conn, SCHEMA, "account.purged", row.user_id, {
        "deletion_id": row.deletion_id, "service": "mailer", "drafts_not_removed": int(row.drafts_left)})
    forget_user(conn, SCHEMA, row.user_id)
    conn.execute(text(f"DELETE FROM {SCHEMA}.purges WHERE user_id = :u"), {"u": row.user_id})
    log.info("account purge reported", extra={"deletion_id": row.deletion_id,
                                              "drafts_not_removed": int(row.drafts_left)})
