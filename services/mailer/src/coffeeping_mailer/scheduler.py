"""The scheduler: sends each due email exactly once, and removes drafts that are no longer wanted.

Exactly once, with any number of processes and a crash at any moment:

- A claimer takes a batch of due jobs with ``SELECT ... FOR UPDATE SKIP LOCKED`` and keeps that
  transaction (and the row locks) open while the sender threads work on the batch's steps, each step
  in its own short transactions; then it deletes or reschedules the batch's jobs and commits. If the
  process dies the locks go with the claimer's connection and the jobs are due again for whoever
  comes next. Two workers never hold the same job. A process holds one long transaction per claimer
  (two by default), not one per sender, so many senders can overlap their Gmail calls on a few
  database connections.
- Progress is committed before each irreversible call. The first email records its RFC Message-ID
  and the mailbox's history id before ``messages.send``; a retry first looks in the history for a
  sent message with that Message-ID. A follow-up is sent with ``drafts.send``: a second send of the
  same draft is a 404, and then the thread tells whether it went out (a SENT message we have not
  recorded, after the attempt began) or the user deleted the draft (``draft_deleted``).
- The step is marked ``sent`` and the next step's job is created in one transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Connection,
    Engine,
    Integer,
    Interval,
    and_,
    any_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from coffeeping.common.access_log import about
from coffeeping.common.db import system_tx, user_tx
from coffeeping.common.gmail import classify_received
from coffeeping.common.messaging import publish_in_tx
from coffeeping.common.tracing import job_span
from coffeeping.events.v1 import events_pb2 as ev
from coffeeping_mailer import fence, lifecycle, metrics, schedule
from coffeeping_mailer.fence import FENCE_OPEN, fence_params
from coffeeping_mailer.gmail_api import Disconnected, Gmail, NotFound, Rejected, ThreadMessage, Transient
from coffeeping_mailer.mime import Outgoing, UnsafeHeader, build, new_message_id, reply_subject, to_raw
from coffeeping_mailer.models import SCHEMA, SEQUENCE_LIVE, draft_deletions, jobs, one_of, sequences, steps

log = logging.getLogger("coffeeping_mailer.scheduler")
UTC = dt.UTC
_PENDING = ("scheduled", "sending")


# The scheduler's statements are built once, here: a statement object memoises its cache key, so a
# send pays only for executing them. Every per-call value is a bind parameter (``p_*``: no parameter is
# named after a column, which an INSERT or UPDATE would take for a value of that column).
def _p(name: str, column: Any) -> Any:
    return bindparam(name, type_=column.type)


_STEP = _p("p_step", steps.c.id)
_SEQ = _p("p_seq", steps.c.sequence_id)

# A step may go to Gmail (a send, a draft) only if the user is not fenced and its sequence still runs;
# every ``UPDATE steps`` that commits to such a call carries this condition (executed with
# ``fence_params``).
_MAY_PROCEED: ColumnElement[bool] = and_(
    FENCE_OPEN, exists().where(sequences.c.id == steps.c.sequence_id, one_of(sequences.c.status, SEQUENCE_LIVE)))

# What the scheduler reads of a step and its sequence (``_LOAD``, ``_LOAD_FOR_SEND``).
_STEP_AND_SEQUENCE = (
    steps.c.id, steps.c.position, steps.c.body, steps.c.delay, steps.c.send_at, steps.c.status,
    steps.c.rfc_message_id, steps.c.draft_id, steps.c.draft_message_id, steps.c.sending_since, steps.c.attempts,
    steps.c.due_at, sequences.c.id.label("sequence_id"), sequences.c.contact_id, sequences.c.subject,
    sequences.c.status.label("seq_status"), sequences.c.to_email, sequences.c.to_name, sequences.c.thread_id,
    sequences.c.history_id, sequences.c.started_at, sequences.c.business_days, sequences.c.window_start,
    sequences.c.window_end, sequences.c.time_zone)


def _load_query(for_send: bool) -> Any:
    """The step (``p_step``) with its sequence; ``for_send`` adds, in the same query, the user's sends of
    the last 24 hours (for the daily cap), the Gmail ids already recorded in the sequence, and whether the
    fence is open (``fence_params``)."""
    query = select(*_STEP_AND_SEQUENCE).join_from(steps, sequences, sequences.c.id == steps.c.sequence_id)
    if for_send:
        today = (select(func.count().label("sent_today"), func.min(steps.c.sent_at).label("oldest_today"))
                 .where(steps.c.sent_at > func.now() - dt.timedelta(hours=24)).subquery("d"))
        others = steps.alias("k")
        known = (select(others.c.gmail_message_id)
                 .where(others.c.sequence_id == sequences.c.id, others.c.gmail_message_id.is_not(None)))
        query = (query.join(today, true())
                 .add_columns(today.c.sent_today, today.c.oldest_today,
                              func.array(known.scalar_subquery()).label("known"), FENCE_OPEN.label("fence_open")))
    return query.where(steps.c.id == _STEP)


_LOAD, _LOAD_FOR_SEND = _load_query(False), _load_query(True)

# Claims (``p_limit`` due jobs) and what the claimer does with them.
_CLAIM = (select(jobs.c.step_id, jobs.c.sequence_id, jobs.c.user_id, jobs.c.due_at)
          .where(jobs.c.due_at <= func.now()).order_by(jobs.c.due_at)
          .limit(bindparam("p_limit", type_=Integer())).with_for_update(skip_locked=True))
_JOBS_DONE = delete(jobs).where(jobs.c.step_id == any_(bindparam("p_steps", type_=ARRAY(jobs.c.step_id.type))))
_JOB_LATER = update(jobs).where(jobs.c.step_id == _STEP).values(due_at=_p("p_due", jobs.c.due_at))

# A step.
_DEFER_CAPPED = update(steps).where(steps.c.id == _STEP).values(last_error="daily cap reached; deferred")
_BACK_TO_SCHEDULED = (update(steps).where(steps.c.id == _STEP, steps.c.status == "sending", steps.c.position > 0)
                      .values(status="scheduled"))
_TRANSIENT = (update(steps).where(steps.c.id == _STEP)
              .values(attempts=_p("p_attempts", steps.c.attempts), last_error=_p("p_error", steps.c.last_error),
                      status=case((and_(steps.c.position > 0, steps.c.status == "sending"), "scheduled"),
                                  else_=steps.c.status)))
_FAILED = (update(steps).where(steps.c.id == _STEP, steps.c.status != "sent")
           .values(status="failed", last_error=_p("p_error", steps.c.last_error), attempts=steps.c.attempts + 1))

# The first email: committed to (behind the fence), then recorded.
_FIRST_SENDING = (update(steps).where(steps.c.id == _STEP, one_of(steps.c.status, _PENDING), _MAY_PROCEED)
                  .values(status="sending", sending_since=func.now(),
                          rfc_message_id=_p("p_rfc", steps.c.rfc_message_id))
                  .returning(steps.c.id))
_SEQUENCE_MAILBOX = (update(sequences).where(sequences.c.id == _SEQ)
                     .values(history_id=_p("p_history", sequences.c.history_id),
                             user_email=_p("p_user_email", sequences.c.user_email)))
_FIRST_SENT = (update(steps).where(steps.c.id == _STEP, steps.c.status != "sent")
               .values(status="sent", sent_at=func.now(), gmail_message_id=_p("p_message", steps.c.gmail_message_id),
                       thread_id=_p("p_thread", steps.c.thread_id), rfc_message_id=_p("p_rfc", steps.c.rfc_message_id),
                       sent_body=steps.c.body, last_error=None)
               .returning(steps.c.sent_at))
_SEQUENCE_STARTED = (update(sequences).where(sequences.c.id == _SEQ, one_of(sequences.c.status, SEQUENCE_LIVE))
                     .values(status="active", thread_id=_p("p_thread", sequences.c.thread_id),
                             started_at=_p("p_started", sequences.c.started_at), updated_at=func.now())
                     .returning(sequences.c.id))
_SEQUENCE_THREAD = (update(sequences).where(sequences.c.id == _SEQ, sequences.c.thread_id.is_(None))
                    .values(thread_id=_p("p_thread", sequences.c.thread_id)))
_STOP_REASON = select(sequences.c.stop_reason).where(sequences.c.id == _SEQ)

# The next steps.
_NEXT_STEPS = (select(steps.c.id, steps.c.delay, steps.c.send_at)
               .where(steps.c.sequence_id == _SEQ, steps.c.position > bindparam("p_position", type_=Integer()),
                      steps.c.status == "scheduled")
               .order_by(steps.c.position))
_COMPLETED = (update(sequences).where(sequences.c.id == _SEQ, one_of(sequences.c.status, SEQUENCE_LIVE))
              .values(status="completed", stopped_at=func.now(), updated_at=func.now())
              .returning(sequences.c.id))
_DUE_AT = update(steps).where(steps.c.id == _STEP).values(due_at=_p("p_due", steps.c.due_at))
# ``SET LOCAL lock_timeout = '10s'``
_SHORT_LOCK_TIMEOUT = select(func.set_config("lock_timeout", "10s", True))

# Drafts.
_DRAFTLESS = (select(steps.c.id).where(steps.c.sequence_id == _SEQ, steps.c.position > 0,
                                       steps.c.status == "scheduled", steps.c.draft_id.is_(None))
              .order_by(steps.c.position))
_FIRST_MESSAGE_ID = select(steps.c.rfc_message_id).where(steps.c.sequence_id == _SEQ, steps.c.position == 0)
_DRAFT_INTENT = (update(steps)
                 .where(steps.c.id == _STEP, steps.c.draft_id.is_(None), steps.c.status == "scheduled", _MAY_PROCEED)
                 .values(rfc_message_id=_p("p_rfc", steps.c.rfc_message_id))
                 .returning(steps.c.id))
_DRAFT_KEPT = (update(steps).where(steps.c.id == _STEP, steps.c.draft_id.is_(None), steps.c.status == "scheduled")
               .values(draft_id=_p("p_draft", steps.c.draft_id),
                       draft_message_id=_p("p_draft_message", steps.c.draft_message_id))
               .returning(steps.c.id))
_DRAFT_DROPPED = insert(draft_deletions).values(user_id=_p("p_user", draft_deletions.c.user_id),
                                                draft_id=_p("p_draft", draft_deletions.c.draft_id),
                                                sequence_id=_p("p_seq", draft_deletions.c.sequence_id),
                                                position=_p("p_position", draft_deletions.c.position))

# A follow-up: committed to (behind the fence), then recorded.
_FOLLOW_UP_SENDING = (update(steps).where(steps.c.id == _STEP, one_of(steps.c.status, _PENDING), _MAY_PROCEED)
                      .values(status="sending", sending_since=func.coalesce(steps.c.sending_since, func.now()))
                      .returning(steps.c.sending_since))
_EDITED = (update(steps).where(steps.c.id == _STEP, steps.c.status == "sending")
           .values(edited_in_gmail=True, sent_body=_p("p_body", steps.c.sent_body)))
_DRAFT_DELETED = (update(steps).where(steps.c.id == _STEP, one_of(steps.c.status, _PENDING))
                  .values(status="cancelled", cancel_reason="draft_deleted"))
_STILL_SCHEDULED = (select(func.count()).select_from(steps)
                    .where(steps.c.sequence_id == _SEQ, steps.c.status == "scheduled"))


def _follow_up_sent(kept_edit: ColumnElement[bool]) -> Any:
    # What went out: the edited body when it was edited in Gmail.
    return (update(steps).where(steps.c.id == _STEP, steps.c.status != "sent")
            .values(status="sent", sent_at=func.now(), gmail_message_id=_p("p_message", steps.c.gmail_message_id),
                    thread_id=_p("p_thread", steps.c.thread_id), last_error=None,
                    sent_body=case((kept_edit, steps.c.sent_body), else_=steps.c.body))
            .returning(steps.c.sent_at))


# ``edited`` known (``p_edited``), or None: as recorded.
_FOLLOW_UP_SENT = {True: _follow_up_sent(bindparam("p_edited", type_=Boolean())),
                   False: _follow_up_sent(steps.c.edited_in_gmail)}

# The draft cleaner.
_QUEUED = draft_deletions.c
_CLAIM_DRAFTS = (select(_QUEUED.id, _QUEUED.user_id, _QUEUED.draft_id, _QUEUED.thread_id, _QUEUED.rfc_message_id,
                        _QUEUED.attempts, _QUEUED.give_up_at, _QUEUED.sequence_id, _QUEUED.position)
                 .where(_QUEUED.not_before <= func.now()).order_by(_QUEUED.not_before).limit(20)
                 .with_for_update(skip_locked=True))
_DRAFT_QUEUED_ID = _p("p_id", _QUEUED.id)
_DRAFT_LATER = (update(draft_deletions).where(_QUEUED.id == _DRAFT_QUEUED_ID)
                .values(attempts=_QUEUED.attempts + 1,
                        not_before=func.now() + bindparam("p_backoff", type_=Interval())))
_DRAFT_DONE = delete(draft_deletions).where(_QUEUED.id == _DRAFT_QUEUED_ID)


@dataclass(frozen=True)
class Retry:
    due: dt.datetime


class Scheduler:
    def __init__(self, engine: Engine, gmail: Gmail, tombstone_key: bytes, *, interval_s: float = 5.0,
                 workers: int = 8, daily_cap: int = 400, max_attempts: int = 8, claimers: int = 3,
                 batch: int | None = None) -> None:
        self.engine = engine
        self.gmail = gmail
        self.tombstone_key = tombstone_key
        self.interval_s = interval_s
        self.workers = workers
        self.daily_cap = daily_cap
        self.max_attempts = max_attempts
        self.claimers = max(1, claimers)
        # Batches of half the senders, three claimers: enough claimed jobs to keep every sender busy while
        # a batch waits for its slowest step.
        self.batch = batch or max(1, -(-workers // 2))
        metrics.watch_schedule(engine)

    # ------------------------------------------------------------------------------------------ loops
    def run(self, stop: threading.Event) -> None:
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sender") as senders:
            threads = [threading.Thread(target=self._loop, args=(stop, lambda: self.run_batch(senders)),
                                        name=f"claimer-{i}", daemon=True) for i in range(self.claimers)]
            threads.append(threading.Thread(target=self._loop, args=(stop, self.delete_drafts_once),
                                            name="draft-cleaner", daemon=True))
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

    def _loop(self, stop: threading.Event, once: Any) -> None:
        failures = 0
        while not stop.is_set():
            try:
                worked = once()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the loop must survive a database outage
                failures += 1
                log.warning("scheduler pass failed", extra={"error": type(exc).__name__, "failures": failures})
                stop.wait(min(0.5 * 2 ** min(failures, 6), 30.0))
                continue
            if not worked:
                stop.wait(self.interval_s)

    def run_batch(self, senders: Executor) -> bool:
        """Claim a batch of due jobs and work on them in the sender threads; True when the batch was full
        (more may be due at once)."""
        def work(jobs: list[Any]) -> list[Retry | None]:
            return [f.result() for f in [senders.submit(self._work, job) for job in jobs]]

        return self._claim_and_work(self.batch, work) >= self.batch

    def _claim_and_work(self, limit: int, work: Any) -> int:
        with system_tx(self.engine) as conn:
            claimed = conn.execute(_CLAIM, {"p_limit": limit}).all()
            if not claimed:
                return 0
            outcomes = work(claimed)
            done = [job.step_id for job, outcome in zip(claimed, outcomes, strict=True) if outcome is None]
            later = [(job.step_id, outcome.due) for job, outcome in zip(claimed, outcomes, strict=True)
                     if isinstance(outcome, Retry)]
            if done:
                conn.execute(_JOBS_DONE, {"p_steps": done})
            for step_id, due in later:
                conn.execute(_JOB_LATER, {"p_step": step_id, "p_due": due})
        return len(claimed)

    def _work(self, job: Any) -> Retry | None:
        try:
            with job_span("mailer.step process", {"coffeeping.step.id": str(job.step_id)}):
                return self.process(job)
        except Exception as exc:  # noqa: BLE001 - a bug or a database error must not spin on one job
            log.error("step processing failed", extra={"step_id": str(job.step_id), "error": type(exc).__name__})
            metrics.failed("internal")
            return Retry(dt.datetime.now(UTC) + dt.timedelta(seconds=30))

    # ------------------------------------------------------------------------------------------ a step
    def process(self, job: Any) -> Retry | None:
        user = job.user_id
        now = dt.datetime.now(UTC)
        with user_tx(self.engine, user) as conn:
            step = conn.execute(_LOAD_FOR_SEND, {"p_step": job.step_id, **fence_params(self.tombstone_key, user)}
                                ).first()
            if step is None or step.seq_status not in ("scheduled", "active"):
                return None
            if not step.fence_open:
                return None  # fenced: the purge removes the rest
            if step.status not in ("scheduled", "sending"):
                return None
            rules = lifecycle.rules_of(step)
            if step.position > 0:
                allowed = schedule.fit_window(now, rules)
                if allowed > now + dt.timedelta(seconds=1):
                    return Retry(allowed)
            if step.sent_today >= self.daily_cap:
                later = step.oldest_today + dt.timedelta(hours=24, seconds=1)
                conn.execute(_DEFER_CAPPED, {"p_step": step.id})
                return Retry(schedule.fit_window(later, rules) if step.position > 0 else later)
            known = set(step.known or ())
            # A follow-up whose draft exists is committed to in this transaction, behind the fence; one
            # without a draft yet is committed to once its draft is made (``_send_follow_up``).
            marked = None
            if step.position > 0 and step.draft_id:
                marked = self._commit_to_follow_up(conn, user, step)
                if marked is None:
                    return None
        metrics.late_by(step.position, (now - job.due_at).total_seconds())
        try:
            with about(step.sequence_id, step.position, step.thread_id):
                if step.position == 0:
                    self._send_first(user, step)
                else:
                    self._send_follow_up(user, step, known, marked)
            return None
        except Disconnected:
            log.warning("gmail disconnected; pausing the user's sequences", extra={"step_id": str(step.id)})
            metrics.failed("disconnected")
            self.gmail.forget(user)
            with user_tx(self.engine, user) as conn:
                lifecycle.pause_all(conn, "gmail_disconnected")
                conn.execute(_BACK_TO_SCHEDULED, {"p_step": step.id})
            return None
        except Transient as exc:
            return self._transient(user, step, exc)
        except (Rejected, UnsafeHeader) as exc:
            reason = f"gmail refused the message ({exc})" if isinstance(exc, Rejected) else "unsafe header"
            log.error("step failed", extra={"step_id": str(step.id), "reason": reason})
            metrics.failed("rejected" if isinstance(exc, Rejected) else "unsafe_header")
            self._fail(user, step, reason)
            return None

    def _transient(self, user: str, step: Any, exc: Transient) -> Retry | None:
        attempts = step.attempts + 1
        if attempts >= self.max_attempts:
            metrics.failed("gave_up")
            self._fail(user, step, f"{exc.reason}; gave up after {attempts} attempts")
            return None
        metrics.failed(metrics.transient_reason(exc.reason))
        backoff = min(2.0 ** attempts, 600.0)
        delay = max(backoff, exc.retry_after or 0.0)
        log.info("gmail busy; step deferred", extra={"step_id": str(step.id), "reason": exc.reason,
                                                     "retry_in_s": delay, "attempts": attempts})
        with user_tx(self.engine, user) as conn:
            conn.execute(_TRANSIENT, {"p_step": step.id, "p_attempts": attempts, "p_error": exc.reason})
        return Retry(dt.datetime.now(UTC) + dt.timedelta(seconds=delay))

    def _fail(self, user: str, step: Any, reason: str) -> None:
        with user_tx(self.engine, user) as conn:
            conn.execute(_FAILED, {"p_step": step.id, "p_error": reason[:300]})
            lifecycle.stop_sequence(conn, user, step.sequence_id, "failed", None)

    # ------------------------------------------------------------------------------------ first email
    def _send_first(self, user: str, step: Any) -> None:
        user_email = self.gmail.user_email(user)
        if step.rfc_message_id and step.history_id:
            # An earlier attempt may have gone out before the process stopped: look before sending again.
            for message in self.gmail.sent_since(user, step.history_id):
                if self.gmail.own_header(user, message["id"], "Message-ID") == step.rfc_message_id:
                    log.info("first email found already sent", extra={"step_id": str(step.id)})
                    self._record_first(user, step, message["id"], message["threadId"], step.rfc_message_id,
                                       step.history_id, user_email)
                    return
            rfc, history_id = step.rfc_message_id, step.history_id
        else:
            history_id = self.gmail.history_id(user)
            rfc = new_message_id(user_email)
        raw = build(Outgoing(step.to_email, step.to_name, user_email, step.subject, step.body, rfc))
        with user_tx(self.engine, user) as conn:
            # The fence and the sequence's state, checked in the transaction that commits to the send.
            marked = conn.execute(
                _FIRST_SENDING, {"p_step": step.id, "p_rfc": rfc, **fence_params(self.tombstone_key, user)}
            ).first()
            if marked is None:
                return
            conn.execute(_SEQUENCE_MAILBOX,
                         {"p_seq": step.sequence_id, "p_history": history_id, "p_user_email": user_email})
        result = self.gmail.send(user, to_raw(raw))
        metrics.sent(0)
        try:
            # Gmail may put its own Message-ID on a sent message; replies must reference the real one.
            real = self.gmail.own_header(user, result["id"], "Message-ID") or rfc
        except (Transient, NotFound):
            real = rfc
        self._record_first(user, step, result["id"], result["threadId"], real, history_id, user_email)

    def _record_first(self, user: str, step: Any, message_id: str, thread_id: str, rfc: str, history_id: str,
                      user_email: str) -> None:
        with user_tx(self.engine, user) as conn:
            done = conn.execute(
                _FIRST_SENT, {"p_step": step.id, "p_message": message_id, "p_thread": thread_id, "p_rfc": rfc}
            ).first()
            if done is None:
                return
            live = conn.execute(
                _SEQUENCE_STARTED, {"p_seq": step.sequence_id, "p_thread": thread_id, "p_started": done.sent_at}
            ).first()
            conn.execute(_SEQUENCE_THREAD, {"p_seq": step.sequence_id, "p_thread": thread_id})
            publish_in_tx(conn, SCHEMA, user, ev.SequenceStarted(
                sequence_id=str(step.sequence_id), contact_id=str(step.contact_id), contact_email=step.to_email,
                thread_id=thread_id, message_id=message_id,
                history_id=int(history_id) if str(history_id or "").isdigit() else None, user_email=user_email))
            publish_in_tx(conn, SCHEMA, user, ev.SequenceMessageSent(
                sequence_id=str(step.sequence_id), thread_id=thread_id, message_id=message_id))
            if live is None:
                # Stopped while the email was on its way: tell the watcher, schedule nothing.
                reason = conn.execute(_STOP_REASON, {"p_seq": step.sequence_id}).scalar()
                publish_in_tx(conn, SCHEMA, user,
                              ev.SequenceStopped(sequence_id=str(step.sequence_id), reason=reason or "cancelled"))
                return
            self._plan_next(conn, user, step, done.sent_at, chain=True)
        log.info("first email sent", extra={"step_id": str(step.id), "gmail_message_id": message_id})
        self._create_drafts(user, step.sequence_id, user_email)

    def _plan_next(self, conn: Connection, user: str, step: Any, sent_at: dt.datetime, chain: bool) -> None:
        """Set due times from ``sent_at`` (all remaining steps when ``chain``) and queue the next one."""
        rules = lifecycle.rules_of(step)
        rows = conn.execute(_NEXT_STEPS, {"p_seq": step.sequence_id, "p_position": step.position}).all()
        if not rows:
            ended = conn.execute(_COMPLETED, {"p_seq": step.sequence_id}).first()
            if ended is not None:
                publish_in_tx(conn, SCHEMA, user,
                              ev.SequenceStopped(sequence_id=str(step.sequence_id), reason="completed"))
            return
        previous = sent_at
        for index, row in enumerate(rows):
            if row.delay:
                due = schedule.next_due(previous, schedule.parse_delay(row.delay), rules)
            else:
                due = max(row.send_at, previous)
            conn.execute(_DUE_AT, {"p_step": row.id, "p_due": due})
            if index == 0:
                # The next job's row could be one a claimer of this process holds (only if a sequence ever
                # had two jobs): never wait on it for long; the step is retried and finds its send recorded.
                # (``SET LOCAL lock_timeout = '10s'``.)
                conn.execute(_SHORT_LOCK_TIMEOUT)
                lifecycle.insert_job(conn, user, step.sequence_id, row.id, due)
                if not chain:
                    return
            previous = due

    # -------------------------------------------------------------------------------------- drafts
    def _create_drafts(self, user: str, sequence_id: Any, user_email: str) -> None:
        with user_tx(self.engine, user) as conn:
            ids = conn.execute(_DRAFTLESS, {"p_seq": sequence_id}).scalars().all()
        for step_id in ids:
            try:
                self._make_draft(user, step_id, user_email)
            except Transient as exc:
                log.info("draft not created yet; will be at send time", extra={"step_id": str(step_id),
                                                                              "reason": exc.reason})
                return

    def _make_draft(self, user: str, step_id: Any, user_email: str) -> tuple[str, str] | None:
        """Create the follow-up's draft in the thread; return (draft id, draft message id).

        Recoverable at every point: the intent (the draft's own Message-ID) is committed first, behind
        the fence, so that a draft created by an attempt that died before recording its id is found
        again (``find_draft``) instead of made twice, and a purge or a stop can still remove it.
        """
        with user_tx(self.engine, user) as conn:
            step = conn.execute(_LOAD, {"p_step": step_id}).first()
            first = conn.execute(_FIRST_MESSAGE_ID, {"p_seq": step.sequence_id}).scalar() if step else None
        if step is None or step.status != "scheduled" or not step.thread_id or not first:
            return None
        if step.draft_id:
            return step.draft_id, step.draft_message_id
        rfc = step.rfc_message_id or new_message_id(user_email)
        with user_tx(self.engine, user) as conn:
            intended = conn.execute(
                _DRAFT_INTENT, {"p_step": step.id, "p_rfc": rfc, **fence_params(self.tombstone_key, user)}
            ).first()
        if intended is None:
            return None
        with about(step.sequence_id, step.position, step.thread_id):
            found = self.gmail.find_draft(user, step.thread_id, rfc) if step.rfc_message_id else None
            if found is not None:
                log.info("draft of an interrupted attempt found", extra={"step_id": str(step.id)})
                draft: dict[str, Any] = {"id": found[0], "message": {"id": found[1]}}
            else:
                raw = build(Outgoing(step.to_email, step.to_name, user_email, reply_subject(step.subject), step.body,
                                     rfc, in_reply_to=first, references=first))
                draft = self.gmail.create_draft(user, to_raw(raw), step.thread_id)
        with user_tx(self.engine, user) as conn:
            kept = conn.execute(
                _DRAFT_KEPT, {"p_step": step.id, "p_draft": draft["id"], "p_draft_message": draft["message"]["id"]}
            ).first()
            if kept is None:
                conn.execute(_DRAFT_DROPPED, {"p_user": user, "p_draft": draft["id"], "p_seq": step.sequence_id,
                                              "p_position": step.position})
                return None
        return draft["id"], draft["message"]["id"]

    # --------------------------------------------------------------------------------------- follow-up
    def _commit_to_follow_up(self, conn: Connection, user: str, step: Any) -> Any:
        """Mark the follow-up ``sending`` (its ``sending_since``), checking the fence and the sequence's
        state in the transaction that commits to the send; None when it may not go."""
        return conn.execute(_FOLLOW_UP_SENDING, {"p_step": step.id, **fence_params(self.tombstone_key, user)}).first()

    def _send_follow_up(self, user: str, step: Any, known: set[str], marked: Any) -> None:
        """Send a follow-up: ``marked`` when ``process`` already committed to it (its draft exists)."""
        user_email = self.gmail.user_email(user)
        draft_id = step.draft_id
        if marked is None:
            made = self._make_draft(user, step.id, user_email)
            if made is None:
                return
            draft_id = made[0]
            with user_tx(self.engine, user) as conn:
                marked = self._commit_to_follow_up(conn, user, step)
            if marked is None:
                return
        # The pre-send check, as late as it can be: the thread's From headers (metadata only). A reply
        # that landed before this read stops the sequence; what remains is this read's own round trip
        # and the send's (bench/reply_race.py measures it).
        try:
            thread = self.gmail.thread(user, step.thread_id)
        except NotFound:
            self._stop(user, step, "thread_deleted", None)
            return
        answer = self._answer(thread, user_email, step)
        if answer is not None:
            self._stop(user, step, *answer)
            return
        edited = False
        if step.draft_message_id not in {m.id for m in thread if "DRAFT" in m.label_ids}:
            # The draft's message is not in the thread as we made it: edited in Gmail, or deleted.
            try:
                current, edited_body = self.gmail.draft_content(user, draft_id)
            except NotFound:
                if not self._adopt_sent(user, step, thread, known):
                    self._draft_deleted(user, step)
                return
            edited = current != step.draft_message_id
            if edited:
                # Stored before the send, so that a send adopted after a crash records what went out.
                with user_tx(self.engine, user) as conn:
                    conn.execute(_EDITED, {"p_step": step.id, "p_body": edited_body})
        try:
            result = self.gmail.send_draft(user, draft_id)
            metrics.sent(step.position)
        except NotFound:
            thread = self.gmail.thread(user, step.thread_id)
            if not self._adopt_sent(user, step, thread, known, since=marked.sending_since):
                self._draft_deleted(user, step)
            return
        self._record_follow_up(user, step, result["id"], edited)

    @staticmethod
    def _answer(thread: list[ThreadMessage], user_email: str, step: Any) -> tuple[str, dt.datetime] | None:
        """(reason, when) if someone other than the user wrote in the thread since the sequence began."""
        started_ms = int(step.started_at.timestamp() * 1000) if step.started_at else 0
        for message in thread:
            if "DRAFT" in message.label_ids or "SENT" in message.label_ids or not message.sender:
                continue
            kind = classify_received(message.sender, user_email)
            if kind != "self" and message.internal_date_ms >= started_ms - 5000:
                reason = "bounced" if kind == "bounce" else "replied"
                log.info("answer found in the thread before sending; sequence stopped",
                         extra={"step_id": str(step.id), "reason": reason, "gmail_message_id": message.id})
                return reason, dt.datetime.fromtimestamp(message.internal_date_ms / 1000, UTC)
        return None

    def _stop(self, user: str, step: Any, reason: str, when: dt.datetime | None) -> None:
        with user_tx(self.engine, user) as conn:
            lifecycle.stop_sequence(conn, user, step.sequence_id, reason, when)

    def _adopt_sent(self, user: str, step: Any, thread: list[ThreadMessage], known: set[str],
                    since: dt.datetime | None = None) -> bool:
        """After a draft 404: if our own earlier attempt sent it, record that send and say True."""
        since = since or step.sending_since
        if since is None:
            return False
        floor = int(since.timestamp() * 1000) - 2000
        for message in thread:
            if "SENT" in message.label_ids and message.id not in known and message.internal_date_ms >= floor:
                log.info("follow-up found already sent",
                         extra={"step_id": str(step.id), "gmail_message_id": message.id})
                self._record_follow_up(user, step, message.id, edited=None)
                return True
        return False

    def _draft_deleted(self, user: str, step: Any) -> None:
        """The user deleted the draft in Gmail: that step is cancelled; the sequence goes on without it."""
        log.info("draft deleted in gmail; step cancelled", extra={"step_id": str(step.id)})
        with user_tx(self.engine, user) as conn:
            conn.execute(_DRAFT_DELETED, {"p_step": step.id})
            rest = conn.execute(_STILL_SCHEDULED, {"p_seq": step.sequence_id}).scalar()
            if rest:
                self._plan_next(conn, user, step, dt.datetime.now(UTC), chain=False)
            else:
                lifecycle.stop_sequence(conn, user, step.sequence_id, "draft_deleted", None)

    def _record_follow_up(self, user: str, step: Any, message_id: str, edited: bool | None) -> None:
        with user_tx(self.engine, user) as conn:
            # What went out: the edited body when it was edited in Gmail (``edited`` None: as recorded).
            params: dict[str, Any] = {"p_step": step.id, "p_message": message_id, "p_thread": step.thread_id}
            if edited is not None:
                params["p_edited"] = edited
            done = conn.execute(_FOLLOW_UP_SENT[edited is not None], params).first()
            if done is None:
                return
            publish_in_tx(conn, SCHEMA, user, ev.SequenceMessageSent(
                sequence_id=str(step.sequence_id), thread_id=step.thread_id, message_id=message_id))
            self._plan_next(conn, user, step, done.sent_at, chain=False)
        log.info("follow-up sent", extra={"step_id": str(step.id), "gmail_message_id": message_id})

    # --------------------------------------------------------------------------------- draft cleanup
    def delete_drafts_once(self) -> bool:
        """Remove queued drafts from Gmail, then report the purges whose drafts are all dealt with.

        A draft of a deleted account is retried until its ``give_up_at`` and then counted as not
        removed; any other (a stop, a contact's deletion) is retried a bounded number of times.
        """
        with system_tx(self.engine) as conn:
            rows = conn.execute(_CLAIM_DRAFTS).all()
            for row in rows:
                removed = self._delete_draft(row)
                if removed is None:  # transient: try again later, within its bound
                    if row.give_up_at is None:
                        exhausted, cap = row.attempts >= 20, 600.0
                    else:
                        exhausted, cap = row.give_up_at <= dt.datetime.now(UTC), 60.0
                    if not exhausted:
                        backoff = dt.timedelta(seconds=min(2.0 ** row.attempts, cap))
                        conn.execute(_DRAFT_LATER, {"p_id": row.id, "p_backoff": backoff})
                        continue
                    removed = False
                if not removed:
                    fence.count_left(conn, row.user_id)
                conn.execute(_DRAFT_DONE, {"p_id": row.id})
        finished = fence.finish_purges(self.engine)
        for user in finished:
            self.gmail.forget(user)
        return bool(rows) or bool(finished)

    def _delete_draft(self, row: Any) -> bool | None:
        """True when the draft is gone from Gmail, False when it cannot be removed, None to retry."""
        try:
            with about(row.sequence_id, row.position, row.thread_id):
                draft_id = row.draft_id
                if draft_id is None:
                    found = self.gmail.find_draft(row.user_id, row.thread_id, row.rfc_message_id)
                    if found is None:
                        return True  # the interrupted attempt never created it
                    draft_id = found[0]
                self.gmail.delete_draft(row.user_id, draft_id)
        except NotFound:
            return True  # gone already
        except (Disconnected, Rejected):
            return False  # the grant is gone, and so is our access to the draft
        except Transient:
            return None
        return True

