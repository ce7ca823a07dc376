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

from sqlalchemy import Connection, Engine, text

from coffeeping.common.db import system_tx, user_tx
from coffeeping.common.gmail import classify_received
from coffeeping.common.messaging import publish_in_tx
from coffeeping.common.tombstones import is_buried
from coffeeping_mailer import fence, schedule, services
from coffeeping_mailer.fence import FENCE_OPEN, fence_param
from coffeeping_mailer.gmail_api import Disconnected, Gmail, NotFound, Rejected, ThreadMessage, Transient
from coffeeping_mailer.mime import Outgoing, UnsafeHeader, build, new_message_id, reply_subject, to_raw
from coffeeping_mailer.models import SCHEMA

log = logging.getLogger("coffeeping_mailer.scheduler")
UTC = dt.UTC
# A step may go to Gmail (a send, a draft) only if the user is not fenced and its sequence still runs;
# every statement that commits to such a call carries this (bind ``fence`` with ``fence_param``).
_MAY_PROCEED = (f"{FENCE_OPEN} AND EXISTS (SELECT 1 FROM {SCHEMA}.sequences s WHERE s.id = sequence_id "
                "AND s.status IN ('scheduled', 'active'))")


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
            jobs = conn.execute(
                text(f"SELECT step_id, sequence_id, user_id, due_at FROM {SCHEMA}.jobs WHERE due_at <= now() "
                     "ORDER BY due_at LIMIT :n FOR UPDATE SKIP LOCKED"), {"n": limit}
            ).all()
            if not jobs:
                return 0
            outcomes = work(jobs)
            done = [job.step_id for job, outcome in zip(jobs, outcomes, strict=True) if outcome is None]
            later = [(job.step_id, outcome.due) for job, outcome in zip(jobs, outcomes, strict=True)
                     if isinstance(outcome, Retry)]
            if done:
                conn.execute(text(f"DELETE FROM {SCHEMA}.jobs WHERE step_id = ANY(:s)"), {"s": done})
            for step_id, due in later:
                conn.execute(text(f"UPDATE {SCHEMA}.jobs SET due_at = :d WHERE step_id = :s"),
                             {"d": due, "s": step_id})
        return len(jobs)

    def _work(self, job: Any) -> Retry | None:
        try:
            return self.process(job)
        except Exception as exc:  # noqa: BLE001 - a bug or a database error must not spin on one job
            log.error("step processing failed", extra={"step_id": str(job.step_id), "error": type(exc).__name__})
            return Retry(dt.datetime.now(UTC) + dt.timedelta(seconds=30))

    # ------------------------------------------------------------------------------------------ a step
    def _load(self, conn: Connection, step_id: Any, for_send: bool = False) -> Any:
        """The step with its sequence; ``for_send`` adds, in the same query, the user's sends of the last
        24 hours (for the daily cap) and the Gmail ids already recorded in the sequence."""
        columns, joins = "", ""
        if for_send:
            columns = (", d.sent_today, d.oldest_today, "
                       f"ARRAY(SELECT k.gmail_message_id FROM {SCHEMA}.steps k WHERE k.sequence_id = s.id "
                       "AND k.gmail_message_id IS NOT NULL) AS known")
            joins = (f" CROSS JOIN (SELECT count(*) AS sent_today, min(sent_at) AS oldest_today FROM {SCHEMA}.steps "
                     "WHERE sent_at > now() - interval '24 hours') AS d")
        return conn.execute(
            text(
                "SELECT st.id, st.position, st.body, st.delay, st.send_at, st.status, st.rfc_message_id, st.draft_id, "
                "st.draft_message_id, st.sending_since, st.attempts, st.due_at, "
                "s.id AS sequence_id, s.contact_id, s.subject, s.status AS seq_status, s.to_email, s.to_name, "
                "s.thread_id, s.history_id, s.started_at, s.business_days, s.window_start, s.window_end, s.time_zone"
                f"{columns} FROM {SCHEMA}.steps st JOIN {SCHEMA}.sequences s ON s.id = st.sequence_id{joins} "
                "WHERE st.id = :id"
            ),
            {"id": step_id},
        ).first()

    def process(self, job: Any) -> Retry | None:
        user = job.user_id
        now = dt.datetime.now(UTC)
        with user_tx(self.engine, user) as conn:
            step = self._load(conn, job.step_id, for_send=True)
            if step is None or step.seq_status not in ("scheduled", "active"):
                return None
            if is_buried(conn, SCHEMA, self.tombstone_key, user):
                return None  # fenced: the purge removes the rest
            if step.status not in ("scheduled", "sending"):
                return None
            rules = services.rules_of(step)
            if step.position > 0:
                allowed = schedule.fit_window(now, rules)
                if allowed > now + dt.timedelta(seconds=1):
                    return Retry(allowed)
            if step.sent_today >= self.daily_cap:
                later = step.oldest_today + dt.timedelta(hours=24, seconds=1)
                conn.execute(text(f"UPDATE {SCHEMA}.steps SET last_error = 'daily cap reached; deferred' "
                                  "WHERE id = :id"), {"id": step.id})
                return Retry(schedule.fit_window(later, rules) if step.position > 0 else later)
            known = set(step.known or ())
        try:
            if step.position == 0:
                self._send_first(user, step)
            else:
                self._send_follow_up(user, step, known)
            return None
        except Disconnected:
            log.warning("gmail disconnected; pausing the user's sequences", extra={"step_id": str(step.id)})
            self.gmail.forget(user)
            with user_tx(self.engine, user) as conn:
                pause_all(conn, "gmail_disconnected")
                conn.execute(text(f"UPDATE {SCHEMA}.steps SET status = 'scheduled' WHERE id = :id "
                                  "AND status = 'sending' AND position > 0"), {"id": step.id})
            return None
        except Transient as exc:
            return self._transient(user, step, exc)
        except (Rejected, UnsafeHeader) as exc:
            reason = f"gmail refused the message ({exc})" if isinstance(exc, Rejected) else "unsafe header"
            log.error("step failed", extra={"step_id": str(step.id), "reason": reason})
            self._fail(user, step, reason)
            return None

    def _transient(self, user: str, step: Any, exc: Transient) -> Retry | None:
        attempts = step.attempts + 1
        if attempts >= self.max_attempts:
            self._fail(user, step, f"{exc.reason}; gave up after {attempts} attempts")
            return None
        backoff = min(2.0 ** attempts, 600.0)
        delay = max(backoff, exc.retry_after or 0.0)
        log.info("gmail busy; step deferred", extra={"step_id": str(step.id), "reason": exc.reason,
                                                     "retry_in_s": delay, "attempts": attempts})
        with user_tx(self.engine, user) as conn:
            conn.execute(
                text(f"UPDATE {SCHEMA}.steps SET attempts = :a, last_error = :e, "
                     "status = CASE WHEN position > 0 AND status = 'sending' THEN 'scheduled' ELSE status END "
                     "WHERE id = :id"),
                {"a": attempts, "e": exc.reason, "id": step.id},
            )
        return Retry(dt.datetime.now(UTC) + dt.timedelta(seconds=delay))

    def _fail(self, user: str, step: Any, reason: str) -> None:
        with user_tx(self.engine, user) as conn:
            conn.execute(text(f"UPDATE {SCHEMA}.steps SET status = 'failed', last_error = :e, "
                              "attempts = attempts + 1 WHERE id = :id AND status <> 'sent'"),
                         {"e": reason[:300], "id": step.id})
            services.stop_sequence(conn, user, str(step.sequence_id), "failed", None)

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
                text(f"UPDATE {SCHEMA}.steps SET status = 'sending', sending_since = now(), rfc_message_id = :r "
                     f"WHERE id = :id AND status IN ('scheduled', 'sending') AND {_MAY_PROCEED} RETURNING id"),
                {"r": rfc, "id": step.id, **fence_param(self.tombstone_key, user)},
            ).first()
            if marked is None:
                return
            conn.execute(text(f"UPDATE {SCHEMA}.sequences SET history_id = :h, user_email = :e WHERE id = :s"),
                         {"h": history_id, "e": user_email, "s": step.sequence_id})
        result = self.gmail.send(user, to_raw(raw))
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
                text(f"UPDATE {SCHEMA}.steps SET status = 'sent', sent_at = now(), gmail_message_id = :m, "
                     "thread_id = :t, rfc_message_id = :r, sent_body = body, last_error = NULL "
                     "WHERE id = :id AND status <> 'sent' RETURNING sent_at"),
                {"m": message_id, "t": thread_id, "r": rfc, "id": step.id},
            ).first()
            if done is None:
                return
            live = conn.execute(
                text(f"UPDATE {SCHEMA}.sequences SET status = 'active', thread_id = :t, started_at = :at, "
                     "updated_at = now() WHERE id = :s AND status IN ('scheduled', 'active') RETURNING id"),
                {"t": thread_id, "at": done.sent_at, "s": step.sequence_id},
            ).first()
            conn.execute(text(f"UPDATE {SCHEMA}.sequences SET thread_id = :t WHERE id = :s AND thread_id IS NULL"),
                         {"t": thread_id, "s": step.sequence_id})
            publish_in_tx(conn, SCHEMA, "sequence.started", user, {
                "sequence_id": str(step.sequence_id), "contact_id": str(step.contact_id),
                "contact_email": step.to_email, "thread_id": thread_id, "message_id": message_id,
                "history_id": history_id, "user_email": user_email})
            publish_in_tx(conn, SCHEMA, "sequence.message_sent", user, {
                "sequence_id": str(step.sequence_id), "thread_id": thread_id, "message_id": message_id})
            if live is None:
                # Stopped while the email was on its way: tell the watcher, schedule nothing.
                reason = conn.execute(text(f"SELECT stop_reason FROM {SCHEMA}.sequences WHERE id = :s"),
                                      {"s": step.sequence_id}).scalar()
                publish_in_tx(conn, SCHEMA, "sequence.stopped", user,
                              {"sequence_id": str(step.sequence_id), "reason": reason or "cancelled"})
                return
            self._plan_next(conn, user, step, done.sent_at, chain=True)
        log.info("first email sent", extra={"step_id": str(step.id), "gmail_message_id": message_id})
        self._create_drafts(user, step.sequence_id, user_email)

    def _plan_next(self, conn: Connection, user: str, step: Any, sent_at: dt.datetime, chain: bool) -> None:
        """Set due times from ``sent_at`` (all remaining steps when ``chain``) and queue the next one."""
        rules = services.rules_of(step)
        rows = conn.execute(
            text(f"SELECT id, delay, send_at FROM {SCHEMA}.steps WHERE sequence_id = :s AND position > :p "
                 "AND status = 'scheduled' ORDER BY position"),
            {"s": step.sequence_id, "p": step.position},
        ).all()
        if not rows:
            ended = conn.execute(
                text(f"UPDATE {SCHEMA}.sequences SET status = 'completed', stopped_at = now(), updated_at = now() "
                     "WHERE id = :s AND status IN ('scheduled', 'active') RETURNING id"),
                {"s": step.sequence_id},
            ).first()
            if ended is not None:
                publish_in_tx(conn, SCHEMA, "sequence.stopped", user,
                              {"sequence_id": str(step.sequence_id), "reason": "completed"})
            return
        previous = sent_at
        for index, row in enumerate(rows):
            if row.delay:
                due = schedule.next_due(previous, schedule.parse_delay(row.delay), rules)
            else:
                due = max(row.send_at, previous)
            conn.execute(text(f"UPDATE {SCHEMA}.steps SET due_at = :d WHERE id = :id"), {"d": due, "id": row.id})
            if index == 0:
                # The next job's row could be one a claimer of this process holds (only if a sequence ever
                # had two jobs): never wait on it for long; the step is retried and finds its send recorded.
                conn.execute(text("SET LOCAL lock_timeout = '10s'"))
                services._insert_job(conn, user, str(step.sequence_id), str(row.id), due)
                if not chain:
                    return
            previous = due

    # -------------------------------------------------------------------------------------- drafts
    def _create_drafts(self, user: str, sequence_id: Any, user_email: str) -> None:
        with user_tx(self.engine, user) as conn:
            rows = conn.execute(text(f"SELECT id FROM {SCHEMA}.steps WHERE sequence_id = :s AND position > 0 "
                                     "AND status = 'scheduled' AND draft_id IS NULL ORDER BY position"),
                                {"s": sequence_id}).all()
        for row in rows:
            try:
                self._make_draft(user, row.id, user_email)
            except Transient as exc:
                log.info("draft not created yet; will be at send time", extra={"step_id": str(row.id),
                                                                              "reason": exc.reason})
                return

    def _make_draft(self, user: str, step_id: Any, user_email: str) -> tuple[str, str] | None:
        """Create the follow-up's draft in the thread; return (draft id, draft message id).

        Recoverable at every point: the intent (the draft's own Message-ID) is committed first, behind
        the fence, so that a draft created by an attempt that died before recording its id is found
        again (``find_draft``) instead of made twice, and a purge or a stop can still remove it.
        """
        with user_tx(self.engine, user) as conn:
            step = self._load(conn, step_id)
            first = conn.execute(text(f"SELECT rfc_message_id FROM {SCHEMA}.steps WHERE sequence_id = :s "
                                      "AND position = 0"), {"s": step.sequence_id}).scalar() if step else None
        if step is None or step.status != "scheduled" or not step.thread_id or not first:
            return None
        if step.draft_id:
            return step.draft_id, step.draft_message_id
        rfc = step.rfc_message_id or new_message_id(user_email)
        with user_tx(self.engine, user) as conn:
            intended = conn.execute(
                text(f"UPDATE {SCHEMA}.steps SET rfc_message_id = :r WHERE id = :id AND draft_id IS NULL "
                     f"AND status = 'scheduled' AND {_MAY_PROCEED} RETURNING id"),
                {"r": rfc, "id": step.id, **fence_param(self.tombstone_key, user)},
            ).first()
        if intended is None:
            return None
        found = self.gmail.find_draft(user, step.thread_id, rfc) if step.rfc_message_id else None
        if found is not None:
            log.info("draft of an interrupted attempt found", extra={"step_id": str(step.id)})
            draft = {"id": found[0], "message": {"id": found[1]}}
        else:
            raw = build(Outgoing(step.to_email, step.to_name, user_email, reply_subject(step.subject), step.body,
                                 rfc, in_reply_to=first, references=first))
            draft = self.gmail.create_draft(user, to_raw(raw), step.thread_id)
        with user_tx(self.engine, user) as conn:
            kept = conn.execute(
                text(f"UPDATE {SCHEMA}.steps SET draft_id = :d, draft_message_id = :m "
                     "WHERE id = :id AND draft_id IS NULL AND status = 'scheduled' RETURNING id"),
                {"d": draft["id"], "m": draft["message"]["id"], "id": step.id},
            ).first()
            if kept is None:
                conn.execute(text(f"INSERT INTO {SCHEMA}.draft_deletions (user_id, draft_id) VALUES (:u, :d)"),
                             {"u": user, "d": draft["id"]})
                return None
        return draft["id"], draft["message"]["id"]

    # --------------------------------------------------------------------------------------- follow-up
    def _send_follow_up(self, user: str, step: Any, known: set[str]) -> None:
        user_email = self.gmail.user_email(user)
        draft_id = step.draft_id
        if not draft_id:
            made = self._make_draft(user, step.id, user_email)
            if made is None:
                return
            draft_id = made[0]
        # The fence and the sequence's state, checked in the transaction that commits to the send.
        with user_tx(self.engine, user) as conn:
            marked = conn.execute(
                text(f"UPDATE {SCHEMA}.steps SET status = 'sending', sending_since = COALESCE(sending_since, now()) "
                     f"WHERE id = :id AND status IN ('scheduled', 'sending') AND {_MAY_PROCEED} "
                     "RETURNING sending_since"),
                {"id": step.id, **fence_param(self.tombstone_key, user)},
            ).first()
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
                    conn.execute(text(f"UPDATE {SCHEMA}.steps SET edited_in_gmail = true, sent_body = :b "
                                      "WHERE id = :id AND status = 'sending'"), {"b": edited_body, "id": step.id})
        try:
            result = self.gmail.send_draft(user, draft_id)
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
            services.stop_sequence(conn, user, str(step.sequence_id), reason, when)

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
            conn.execute(text(f"UPDATE {SCHEMA}.steps SET status = 'cancelled', cancel_reason = 'draft_deleted' "
                              "WHERE id = :id AND status IN ('scheduled', 'sending')"), {"id": step.id})
            rest = conn.execute(text(f"SELECT count(*) FROM {SCHEMA}.steps WHERE sequence_id = :s "
                                     "AND status = 'scheduled'"), {"s": step.sequence_id}).scalar()
            if rest:
                self._plan_next(conn, user, step, dt.datetime.now(UTC), chain=False)
            else:
                services.stop_sequence(conn, user, str(step.sequence_id), "draft_deleted", None)

    def _record_follow_up(self, user: str, step: Any, message_id: str, edited: bool | None) -> None:
        with user_tx(self.engine, user) as conn:
            done = conn.execute(
                text(f"UPDATE {SCHEMA}.steps SET status = 'sent', sent_at = now(), gmail_message_id = :m, "
                     "thread_id = :t, last_error = NULL, "
                     "sent_body = CASE WHEN COALESCE(:e, edited_in_gmail) THEN sent_body ELSE body END "
                     "WHERE id = :id AND status <> 'sent' RETURNING sent_at"),
                {"m": message_id, "t": step.thread_id, "e": edited, "id": step.id},
            ).first()
            if done is None:
                return
            publish_in_tx(conn, SCHEMA, "sequence.message_sent", user, {
                "sequence_id": str(step.sequence_id), "thread_id": step.thread_id, "message_id": message_id})
            self._plan_next(conn, user, step, done.sent_at, chain=False)
        log.info("follow-up sent", extra={"step_id": str(step.id), "gmail_message_id": message_id})

    # --------------------------------------------------------------------------------- draft cleanup
    def delete_drafts_once(self) -> bool:
        """Remove queued drafts from Gmail, then report the purges whose drafts are all dealt with.

        A draft of a deleted account is retried until its ``give_up_at`` and then counted as not
        removed; any other (a stop, a contact's deletion) is retried a bounded number of times.
        """
        with system_tx(self.engine) as conn:
            rows = conn.execute(
                text(f"SELECT id, user_id, draft_id, thread_id, rfc_message_id, attempts, give_up_at "
                     f"FROM {SCHEMA}.draft_deletions WHERE not_before <= now() "
                     "ORDER BY not_before LIMIT 20 FOR UPDATE SKIP LOCKED")
            ).all()
            for row in rows:
                removed = self._delete_draft(row)
                if removed is None:  # transient: try again later, within its bound
                    if row.give_up_at is None:
                        exhausted, cap = row.attempts >= 20, 600.0
                    else:
                        exhausted, cap = row.give_up_at <= dt.datetime.now(UTC), 60.0
                    if not exhausted:
                        conn.execute(
                            text(f"UPDATE {SCHEMA}.draft_deletions SET attempts = attempts + 1, "
                                 "not_before = now() + make_interval(secs => :d) WHERE id = :id"),
                            {"d": min(2.0 ** row.attempts, cap), "id": row.id})
                        continue
                    removed = False
                if not removed:
                    fence.count_left(conn, row.user_id)
                conn.execute(text(f"DELETE FROM {SCHEMA}.draft_deletions WHERE id = :id"), {"id": row.id})
        finished = fence.finish_purges(self.engine)
        for user in finished:
            self.gmail.forget(user)
        return bool(rows) or bool(finished)

    def _delete_draft(self, row: Any) -> bool | None:
        """True when the draft is gone from Gmail, False when it cannot be removed, None to retry."""
        try:
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


def pause_all(conn: Connection, reason: str) -> int:
    """Pause every running sequence of the transaction's user (e.g. Gmail disconnected)."""
    rows = conn.execute(text(f"SELECT id FROM {SCHEMA}.sequences WHERE status IN ('scheduled', 'active')")).all()
    for row in rows:
        services.pause(conn, str(row.id), reason)
    return len(rows)
