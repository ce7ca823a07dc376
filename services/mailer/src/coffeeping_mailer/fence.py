"""The mailer's part of an account deletion: the fence, the purge, and the bounded draft cleanup.

- **Fence.** ``fence`` buries the user in ``mailer.tombstones`` (accounts calls ``FenceUser`` before it
  answers 202; the ``account.deletion_requested`` event does the same). Every statement that lets a
  send or a draft go ahead carries ``FENCE_OPEN`` (executed with ``fence_params``), so the check is in
  the very transaction that commits to the Gmail call, immediately before it. A buried user's API
  calls answer ``account_deleted``.
- **Purge.** ``purge`` (the consumer's transaction) queues the Gmail draft of every unfinished step
  for deletion, deletes every row of the user at once (the access log too: the calls that remove the
  drafts afterwards are not recorded for a buried user), and records a pending purge.
- **Bounded cleanup.** The scheduler's draft cleaner removes the queued drafts, retrying Gmail's
  429/5xx with backoff until ``give_up_at`` (``MAILER_DRAFT_CLEANUP_S`` after the purge). Then
  ``finish_purges`` reports ``account.purged`` with the number of drafts it could not remove, and the
  vault revokes the grant: revocation never waits on Gmail for longer than that bound.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import uuid
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Text,
    bindparam,
    case,
    delete,
    exists,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert

from coffeeping.common.access_log import purge_user as purge_access_log
from coffeeping.common.db import system_tx
from coffeeping.common.messaging import forget_user, publish_in_tx
from coffeeping.common.tombstones import bury, is_buried, subject
from coffeeping.events.v1 import events_pb2 as ev
from coffeeping_mailer.models import (
    SCHEMA,
    contacts,
    draft_deletions,
    jobs,
    outbox,
    purges,
    sequences,
    steps,
    tombstones,
)

log = logging.getLogger(__name__)


# The fence, for statements that commit to a send or a draft: the user is not buried. Built once, with
# the user's tombstone subject as the parameter ``fence_subject``: a statement that carries it is
# executed with ``fence_params(key, user_id)`` (SQLAlchemy refuses to run it without that value).
FENCE_OPEN: ColumnElement[bool] = ~exists().where(
    tombstones.c.subject == bindparam("fence_subject", type_=tombstones.c.subject.type))


def fence_params(key: bytes, user_id: str) -> dict[str, bytes]:
    """The parameter of ``FENCE_OPEN`` for ``user_id``."""
    return {"fence_subject": subject(key, user_id)}


def fence(engine: Engine, key: bytes, user_id: str) -> None:
    with system_tx(engine) as conn:
        bury(conn, SCHEMA, key, user_id)


def is_fenced(engine: Engine, key: bytes, user_id: str) -> bool:
    with system_tx(engine) as conn:
        return is_buried(conn, SCHEMA, key, user_id)


def queue_draft_deletions(conn: Connection, user_id: str, sequence_id: uuid.UUID | None = None,
                          give_up_at: dt.datetime | None = None) -> int:
    """Queue for deletion the Gmail draft of every unfinished follow-up (of one sequence, or all).

    Unfinished is any step not sent: scheduled, sending, failed or cancelled with its draft still
    recorded. A draft whose creation may have been interrupted before its id was recorded (the intent:
    our Message-ID, no draft id) is queued by thread and Message-ID, and the cleaner looks it up. The
    steps forget their draft ids, so that nothing is queued twice.
    """
    queue, forget = _queue_drafts(sequence_id is not None)
    params: dict[str, Any] = {"p_user": user_id, "p_give_up_at": give_up_at}
    if sequence_id is not None:
        params["p_seq"] = sequence_id
    queued: int = conn.execute(queue, params).rowcount
    if queued:
        conn.execute(forget, params)
    return queued


@functools.cache
def _queue_drafts(of_sequence: bool) -> tuple[Any, Any]:
    """``queue_draft_deletions``'s two statements (of one sequence, ``p_seq``, or of all), built once."""
    unsent = [steps.c.position > 0, steps.c.status != "sent"]
    if of_sequence:
        unsent.append(steps.c.sequence_id == bindparam("p_seq", type_=steps.c.sequence_id.type))
    drafts = (
        select(bindparam("p_user", type_=Text()), steps.c.draft_id, sequences.c.thread_id,
               case((steps.c.draft_id.is_(None), steps.c.rfc_message_id)),
               bindparam("p_give_up_at", type_=DateTime(timezone=True)), steps.c.sequence_id, steps.c.position)
        .join_from(steps, sequences, sequences.c.id == steps.c.sequence_id)
        .where(*unsent, steps.c.draft_id.is_not(None) | (
            steps.c.rfc_message_id.is_not(None) & sequences.c.thread_id.is_not(None)
            & steps.c.status.in_(("scheduled", "sending"))))
    )
    queue = insert(draft_deletions).from_select(
        ["user_id", "draft_id", "thread_id", "rfc_message_id", "give_up_at", "sequence_id", "position"], drafts)
    forget = update(steps).where(*unsent, steps.c.draft_id.is_not(None)).values(draft_id=None)
    return queue, forget


def purge(conn: Connection, key: bytes, user_id: str, deletion_id: str, cleanup_s: float) -> int:
    """``account.deletion_requested``: bury the user, queue their drafts, delete their rows at once.

    Runs in the consumer's transaction and makes no Gmail call, so no Gmail outage can hold it back.
    Idempotent: a redelivery finds nothing left and records the purge again, so it reports again.
    Returns the number of drafts waiting for removal.
    """
    bury(conn, SCHEMA, key, user_id)
    give_up_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=cleanup_s)
    queue_draft_deletions(conn, user_id, give_up_at=give_up_at)
    conn.execute(
        update(draft_deletions)
        .where(draft_deletions.c.user_id == user_id,
               draft_deletions.c.give_up_at.is_(None) | (draft_deletions.c.give_up_at > give_up_at))
        .values(give_up_at=give_up_at)
    )
    _drop_unheld_jobs(conn, user_id)
    conn.execute(delete(contacts).where(contacts.c.user_id == user_id))
    purge_access_log(conn, SCHEMA, user_id)
    forget_user(conn, SCHEMA, user_id)
    conn.execute(delete(outbox).where(outbox.c.user_id == user_id, outbox.c.routing_key.startswith("sequence.")))
    drafts = conn.execute(select(func.count()).select_from(draft_deletions)
                          .where(draft_deletions.c.user_id == user_id)).scalar_one()
    record = insert(purges).values(user_id=user_id, deletion_id=deletion_id, drafts_total=drafts)
    conn.execute(record.on_conflict_do_update(index_elements=[purges.c.user_id],
                                              set_={"deletion_id": record.excluded.deletion_id}))
    log.info("account purged; draft cleanup pending", extra={"deletion_id": deletion_id, "drafts": drafts})
    return int(drafts)


def count_left(conn: Connection, user_id: str) -> None:
    """A draft of a purged user that could not be removed (the purge reports the count)."""
    conn.execute(update(purges).where(purges.c.user_id == user_id).values(drafts_left=purges.c.drafts_left + 1))


def finish_purges(engine: Engine) -> list[str]:
    """Report ``account.purged`` for every purge whose drafts are all removed or given up; the users."""
    done: list[str] = []
    with system_tx(engine) as conn:
        rows = conn.execute(_FINISHED_PURGES).all()
        for row in rows:
            # A job a claimer still holds is dropped by its holder (its step is gone): wait for it.
            _drop_unheld_jobs(conn, row.user_id)
            if conn.execute(_HAS_JOBS, {"p_user": row.user_id}).scalar():
                continue
            _report(conn, row)
            done.append(row.user_id)
    return done


def _report(conn: Connection, row: Any) -> None:
    publish_in_tx(conn, SCHEMA, row.user_id, ev.AccountPurged(
        deletion_id=row.deletion_id, service="mailer", drafts_not_removed=int(row.drafts_left)))
    forget_user(conn, SCHEMA, row.user_id)
    conn.execute(delete(purges).where(purges.c.user_id == row.user_id))
    log.info("account purge reported", extra={"deletion_id": row.deletion_id,
                                              "drafts_not_removed": int(row.drafts_left)})


def _drop_unheld_jobs(conn: Connection, user_id: str) -> None:
    """Remove the user's jobs that no claimer holds (``FOR UPDATE SKIP LOCKED``)."""
    conn.execute(_DROP_UNHELD_JOBS, {"p_user": user_id})


# ``finish_purges``'s statements, built once.
_FINISHED_PURGES = (select(purges.c.user_id, purges.c.deletion_id, purges.c.drafts_left)
                    .where(~exists().where(draft_deletions.c.user_id == purges.c.user_id))
                    .order_by(purges.c.created_at).limit(20).with_for_update(skip_locked=True))
_HAS_JOBS = select(exists().where(jobs.c.user_id == bindparam("p_user", type_=jobs.c.user_id.type)))
_UNHELD = jobs.alias("unheld")
_DROP_UNHELD_JOBS = delete(jobs).where(jobs.c.step_id.in_(
    select(_UNHELD.c.step_id).where(_UNHELD.c.user_id == bindparam("p_user", type_=jobs.c.user_id.type))
    .with_for_update(skip_locked=True)))
