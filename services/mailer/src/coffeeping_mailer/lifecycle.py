"""The sequence state machine and its job queue, shared by the API, the scheduler and the consumers.

A sequence is ``draft`` until sent, then ``scheduled`` (its first email is due), ``active`` (the first
email went out, follow-ups are pending), ``paused`` (by the user or a Gmail disconnection) and finally
``stopped`` (with a reason) or ``completed``. A running sequence has one row in ``jobs``: its next due
step, which the scheduler's claimers take with ``FOR UPDATE SKIP LOCKED``. Every function here runs in
the caller's transaction.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert

from coffeeping.common.messaging import publish_in_tx
from coffeeping.events.v1 import events_pb2 as ev
from coffeeping_mailer import schedule
from coffeeping_mailer.fence import queue_draft_deletions
from coffeeping_mailer.models import SCHEMA, SEQUENCE_LIVE, SEQUENCE_TERMINAL, jobs, sequences, steps


def rules_of(seq: Any) -> schedule.Rules:
    """The sending rules of a row with the sequence's time zone, business days and window."""
    return schedule.Rules(
        zone=schedule.parse_zone(seq.time_zone or "UTC"),
        business_days=bool(seq.business_days),
        window_start=schedule.parse_clock(seq.window_start) if seq.window_start else None,
        window_end=schedule.parse_clock(seq.window_end) if seq.window_end else None,
    )


def insert_job(conn: Connection, user_id: str, seq_id: uuid.UUID, step_id: uuid.UUID, due: dt.datetime) -> None:
    """Queue ``step_id`` as the sequence's next due step (a queued one is moved to ``due``)."""
    conn.execute(
        insert(jobs).values(step_id=step_id, sequence_id=seq_id, user_id=user_id, due_at=due)
        .on_conflict_do_update(index_elements=[jobs.c.step_id], set_={"due_at": due})
    )


def drop_jobs(conn: Connection, seq_id: uuid.UUID) -> None:
    """Remove a sequence's jobs that no scheduler holds; a held one is dropped by its holder."""
    unheld = jobs.alias("unheld")
    conn.execute(delete(jobs).where(jobs.c.step_id.in_(
        select(unheld.c.step_id).where(unheld.c.sequence_id == seq_id).with_for_update(skip_locked=True))))


def pause(conn: Connection, seq_id: uuid.UUID, reason: str) -> None:
    """Pause a running sequence (no-op otherwise) and take its job off the queue."""
    conn.execute(
        update(sequences)
        .where(sequences.c.id == seq_id, sequences.c.status.in_(SEQUENCE_LIVE))
        .values(status="paused", pause_reason=reason, updated_at=func.now())
    )
    drop_jobs(conn, seq_id)


def pause_all(conn: Connection, reason: str) -> int:
    """Pause every running sequence of the transaction's user (e.g. Gmail disconnected)."""
    ids = conn.execute(select(sequences.c.id).where(sequences.c.status.in_(SEQUENCE_LIVE))).scalars().all()
    for seq_id in ids:
        pause(conn, seq_id, reason)
    return len(ids)


def stop_sequence(conn: Connection, user_id: str, seq_id: uuid.UUID, reason: str, when: dt.datetime | None) -> bool:
    """End a sequence: cancel its pending steps, queue the drafts of every unsent step for deletion,
    publish the stop.

    Idempotent: a sequence that already ended is left as it is (False).
    """
    row = conn.execute(
        update(sequences)
        .where(sequences.c.id == seq_id, sequences.c.status.not_in(SEQUENCE_TERMINAL))
        .values(status="stopped", stop_reason=reason, stopped_at=func.now() if when is None else when,
                pause_reason=None, updated_at=func.now())
        .returning(sequences.c.id, sequences.c.thread_id)
    ).first()
    if row is None:
        return False
    conn.execute(
        update(steps)
        .where(steps.c.sequence_id == seq_id, steps.c.status.in_(("scheduled", "sending")))
        .values(status="cancelled", cancel_reason=reason)
    )
    queue_draft_deletions(conn, user_id, seq_id)
    drop_jobs(conn, seq_id)
    if row.thread_id:
        publish_in_tx(conn, SCHEMA, user_id, ev.SequenceStopped(sequence_id=str(seq_id), reason=reason))
    return True
