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

from sqlalchemy import Connection, bindparam, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert

from coffeeping.common.messaging import publish_in_tx
from coffeeping.events.v1 import events_pb2 as ev
from coffeeping_mailer import schedule
from coffeeping_mailer.fence import queue_draft_deletions
from coffeeping_mailer.models import (
    SCHEMA,
    SEQUENCE_LIVE,
    SEQUENCE_TERMINAL,
    jobs,
    none_of,
    one_of,
    sequences,
    steps,
)


def rules_of(seq: Any) -> schedule.Rules:
    """The sending rules of a row with the sequence's time zone, business days and window."""
    return schedule.Rules(
        zone=schedule.parse_zone(seq.time_zone or "UTC"),
        business_days=bool(seq.business_days),
        window_start=schedule.parse_clock(seq.window_start) if seq.window_start else None,
        window_end=schedule.parse_clock(seq.window_end) if seq.window_end else None,
    )


# The statements, built once (a statement object memoises its cache key); per-call values are the
# parameters ``p_*`` (never a column's name, which an INSERT or UPDATE would take for that column's value).
_SEQ = bindparam("p_seq", type_=sequences.c.id.type)
_JOB = insert(jobs).values(step_id=bindparam("p_step", type_=jobs.c.step_id.type),
                           sequence_id=bindparam("p_seq", type_=jobs.c.sequence_id.type),
                           user_id=bindparam("p_user", type_=jobs.c.user_id.type),
                           due_at=bindparam("p_due", type_=jobs.c.due_at.type))
_INSERT_JOB = _JOB.on_conflict_do_update(index_elements=[jobs.c.step_id], set_={"due_at": _JOB.excluded.due_at})
_UNHELD = jobs.alias("unheld")
_DROP_JOBS = delete(jobs).where(jobs.c.step_id.in_(
    select(_UNHELD.c.step_id).where(_UNHELD.c.sequence_id == _SEQ).with_for_update(skip_locked=True)))
_PAUSE = (update(sequences)
          .where(sequences.c.id == _SEQ, one_of(sequences.c.status, SEQUENCE_LIVE))
          .values(status="paused", pause_reason=bindparam("p_reason", type_=sequences.c.pause_reason.type),
                  updated_at=func.now()))
_LIVE = select(sequences.c.id).where(one_of(sequences.c.status, SEQUENCE_LIVE))
_STOP = (update(sequences)
         .where(sequences.c.id == _SEQ, none_of(sequences.c.status, SEQUENCE_TERMINAL))
         .values(status="stopped", stop_reason=bindparam("p_reason", type_=sequences.c.stop_reason.type),
                 stopped_at=func.coalesce(bindparam("p_when", type_=sequences.c.stopped_at.type), func.now()),
                 pause_reason=None, updated_at=func.now())
         .returning(sequences.c.id, sequences.c.thread_id))
_CANCEL_PENDING = (update(steps)
                   .where(steps.c.sequence_id == _SEQ, one_of(steps.c.status, ("scheduled", "sending")))
                   .values(status="cancelled", cancel_reason=bindparam("p_reason", type_=steps.c.cancel_reason.type)))


def insert_job(conn: Connection, user_id: str, seq_id: uuid.UUID, step_id: uuid.UUID, due: dt.datetime) -> None:
    """Queue ``step_id`` as the sequence's next due step (a queued one is moved to ``due``)."""
    conn.execute(_INSERT_JOB, {"p_step": step_id, "p_seq": seq_id, "p_user": user_id, "p_due": due})


def drop_jobs(conn: Connection, seq_id: uuid.UUID) -> None:
    """Remove a sequence's jobs that no scheduler holds; a held one is dropped by its holder."""
    conn.execute(_DROP_JOBS, {"p_seq": seq_id})


def pause(conn: Connection, seq_id: uuid.UUID, reason: str) -> None:
    """Pause a running sequence (no-op otherwise) and take its job off the queue."""
    conn.execute(_PAUSE, {"p_seq": seq_id, "p_reason": reason})
    drop_jobs(conn, seq_id)


def pause_all(conn: Connection, reason: str) -> int:
    """Pause every running sequence of the transaction's user (e.g. Gmail disconnected)."""
    ids = conn.execute(_LIVE).scalars().all()
    for seq_id in ids:
        pause(conn, seq_id, reason)
    return len(ids)


def stop_sequence(conn: Connection, user_id: str, seq_id: uuid.UUID, reason: str, when: dt.datetime | None) -> bool:
    """End a sequence: cancel its pending steps, queue the drafts of every unsent step for deletion,
    publish the stop.

    Idempotent: a sequence that already ended is left as it is (False).
    """
    row = conn.execute(_STOP, {"p_seq": seq_id, "p_reason": reason, "p_when": when}).first()
    if row is None:
        return False
    conn.execute(_CANCEL_PENDING, {"p_seq": seq_id, "p_reason": reason})
    queue_draft_deletions(conn, user_id, seq_id)
    drop_jobs(conn, seq_id)
    if row.thread_id:
        publish_in_tx(conn, SCHEMA, user_id, ev.SequenceStopped(sequence_id=str(seq_id), reason=reason))
    return True
