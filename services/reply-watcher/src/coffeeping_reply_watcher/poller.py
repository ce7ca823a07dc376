"""The poll: follow each watched mailbox's history and decide about every new message of a watched
thread, reading nothing but labels and the ``From`` header.

One poll of one user:
1. ``history.list`` with ``historyTypes=messageAdded`` from the stored cursor, every page (2 units a
   page; an idle mailbox costs exactly one call, since the access token is cached and ``getProfile``
   is not called).
2. For each new message of a watched thread: labelled DRAFT → ignored; labelled SENT → ours when the
   mailer reported its id, otherwise a takeover once ``takeover_grace_s`` has passed without the
   mailer's event; any other → ``messages.get`` with ``format=metadata`` and ``metadataHeaders=From``:
   the user's own address → ignored, ``mailer-daemon@`` or ``postmaster@`` → bounce, anyone else →
   reply (an out-of-office answer included: From alone cannot tell it apart).
3. A cursor Google no longer knows (404): a fresh cursor from ``getProfile`` first, then each watched
   thread once with ``threads.get`` (metadata, From only), so nothing between the two is missed.
4. Outcomes, events and the new cursor are committed together; the cursor only moves forward.

429 and 5xx answers put the user on an exponential backoff; a grant that needs reconnecting skips the
user (the vault's ``gmail.disconnected`` event pauses the mailbox until ``gmail.connected``).

Gmail push (``push_topic`` set, docs/PUSH.md): the same loop and thread pool also make and renew each
mailbox's ``users.watch`` and run the queued ``users.stop`` calls, each outside any transaction. A
watched mailbox is polled every ``fallback_interval_s`` instead of ``interval_s``, and such a safety-net
poll first asks ``getProfile`` (1 unit) whether the mailbox moved past the cursor at all (one query
before, one after); a push makes the mailbox due, and wakes the loop, at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

from google.auth.exceptions import RefreshError, TransportError
from googleapiclient.errors import HttpError
from sqlalchemy import Engine

from coffeeping.common.access_log import AccessLog, about
from coffeeping.common.gmail import (
    SCOPE_METADATA,
    GmailClients,
    NeedsReconnect,
    UserGmail,
    VaultTokenSource,
    VaultUnavailable,
    classify_received,
)
from coffeeping_reply_watcher import metrics, services
from coffeeping_reply_watcher.services import Decision, MailboxState, StopItem

log = logging.getLogger(__name__)

_PAGE_SIZE = 500
# What users.watch asks for: only the changes the watcher acts on notify (replies and bounces arrive in
# INBOX, the user writing in a thread from Gmail adds a SENT message); drafts and the rest do not.
WATCH_LABELS = ("INBOX", "SENT")
# A queued users.stop is tried this many times (backoff 1 s doubling, at most 2 minutes), then dropped.
STOP_ATTEMPTS = 8
_STOP_BACKOFF_CAP_S = 120.0

def _from_header(message: dict) -> str | None:
    for header in (message.get("payload") or {}).get("headers") or []:
        if str(header.get("name", "")).lower() == "from":
            return str(header.get("value", ""))
    return None


class Retry(Exception):
    """The poll could not finish; try the user again after ``delay_s`` (``failed``: count a failure).

    ``kind`` says what a retry can change: ``transient`` (an outage, a rate limit), ``grant_gone`` (the
    user's grant is revoked or needs reconnecting) or ``refused`` (Gmail refuses the request as made).
    """

    def __init__(self, reason: str, delay_s: float | None = None, failed: bool = True,
                 kind: str = "transient") -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay_s = delay_s
        self.failed = failed
        self.kind = kind


@dataclass
class _Candidate:
    thread_id: str
    labels: tuple[str, ...]
    from_value: str | None = None
    has_from: bool = False


@dataclass(frozen=True)
class PollResult:
    user_id: str
    outcome: str  # polled, skipped, retry, gone
    events: tuple[dict, ...] = ()


class Poller:
    """Polls due mailboxes with bounded concurrency; several processes share the work safely."""

    def __init__(
        self,
        engine: Engine,
        tokens: VaultTokenSource,
        gmail_endpoint: str,
        interval_s: float = 60.0,
        concurrency: int = 16,
        takeover_grace_s: float = 15.0,
        max_backoff_s: float = 1800.0,
        lease_s: float = 300.0,
        gmail_timeout_s: float = 30.0,
        gmail: GmailClients | None = None,
        push_topic: str | None = None,
        fallback_interval_s: float = 900.0,
        tombstone_key: bytes = b"",
        access_log: AccessLog | None = None,
    ) -> None:
        self.engine = engine
        self.tokens = tokens
        self.gmail_endpoint = gmail_endpoint
        self.interval_s = interval_s
        self.concurrency = concurrency
        self.takeover_grace_s = takeover_grace_s
        self.max_backoff_s = max_backoff_s
        self.lease_s = max(lease_s, gmail_timeout_s * 4)
        self.gmail_timeout_s = gmail_timeout_s
        self.gmail = gmail or GmailClients(gmail_endpoint, tokens, timeout_s=gmail_timeout_s, access_log=access_log)
        self.wake = threading.Event()  # set by CheckMailbox to look for due mailboxes at once
        # Gmail push: the topic users.watch names (None: push off, nothing is watched).
        self.push_topic = push_topic or None
        self.fallback_s = fallback_interval_s if self.push_topic else None
        self.tombstone_key = tombstone_key
        # The first retry of a failed users.watch (doubling up to max_backoff_s).
        self.watch_retry_s = max(1.0, min(interval_s, 60.0))
        # How often the loop looks for due work. With push on, what falls due on a schedule (safety-net
        # polls, renewals, retries) can wait a few seconds, and what cannot (a push, a new mailbox, a
        # queued stop) wakes the loop: fewer, larger claims.
        self.tick_s = min(5.0 if self.push_topic else 1.0, max(0.05, interval_s / 4))
        metrics.watch_backlog(engine)

    # -- the loop -------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Claim due polls, stops and watches and run them on a thread pool until ``stop`` is set."""
        tick = self.tick_s
        inflight: set[futures.Future] = set()
        quick = 0  # after a wake, look again soon: what woke us may commit a moment later
        with futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="watcher-poll") as pool:
            while not stop.is_set():
                inflight = {f for f in inflight if not f.done()}
                try:
                    for job, item in self._claim(self.concurrency - len(inflight)):
                        inflight.add(pool.submit(job, item))
                except Exception as exc:  # noqa: BLE001 - the database comes back; keep the loop alive
                    log.warning("claiming due work failed", extra={"error": type(exc).__name__})
                    stop.wait(tick * 4)
                if len(inflight) >= self.concurrency:
                    futures.wait(inflight, timeout=tick, return_when=futures.FIRST_COMPLETED)
                else:
                    # Everything due is taken: look again after a tick, or at once when a push wakes us.
                    woken = self.wake.wait(min(tick, 0.05) if quick else tick)
                    self.wake.clear()
                    quick = 3 if woken else max(quick - 1, 0)
            futures.wait(inflight, timeout=self.lease_s)

    def _claim(self, free: int) -> list[tuple[Callable[[Any], Any], Any]]:
        """Up to ``free`` jobs: due polls first, then queued watch stops, then watches to make or renew."""
        jobs: list[tuple[Callable[[Any], Any], Any]] = []
        if free > 0:
            jobs += [(self.poll_user, u)
                     for u in services.claim_due(self.engine, free, self.lease_s, bool(self.push_topic))]
        if free - len(jobs) > 0:
            jobs += [(self.stop_watch, s) for s in services.claim_stops(self.engine, free - len(jobs), self.lease_s)]
        if self.push_topic and free - len(jobs) > 0:
            jobs += [(self.watch_user, u)
                     for u in services.claim_watches(self.engine, free - len(jobs), self.lease_s)]
        return jobs

    def poll_due_once(self) -> list[PollResult]:
        """Poll every mailbox due now, ``concurrency`` at a time, and return (tests, benchmarks)."""
        results: list[PollResult] = []
        with futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="watcher-poll") as pool:
            while True:
                claimed = services.claim_due(self.engine, self.concurrency * 4, self.lease_s)
                if not claimed:
                    return results
                results.extend(pool.map(self.poll_user, claimed))

    def push_due_once(self) -> list[str]:
        """Run every queued stop and make or renew every watch due now; their outcomes (tests, benchmarks)."""
        outcomes: list[str] = []
        with futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="watcher-push") as pool:
            while True:
                jobs: list[tuple[Callable[[Any], str], Any]] = [
                    (self.stop_watch, s) for s in services.claim_stops(self.engine, self.concurrency * 4, self.lease_s)]
                if self.push_topic:
                    jobs += [(self.watch_user, u)
                             for u in services.claim_watches(self.engine, self.concurrency * 4, self.lease_s)]
                if not jobs:
                    return outcomes
                outcomes.extend(pool.map(lambda job: job[0](job[1]), jobs))

    # -- one user -------------------------------------------------------------------------------------
    def poll_user(self, user_id: str) -> PollResult:
        started = time.monotonic()
        try:
            result = self._poll(user_id)
        except Retry as retry:
            delay = self._backoff(user_id, retry)
            log.warning("poll deferred", extra={"reason": retry.reason, "retry_in_s": delay})
            metrics.DEFERRALS.labels(retry.kind).inc()
            metrics.polled("retry", time.monotonic() - started)
            return PollResult(user_id, "retry")
        except Exception as exc:  # noqa: BLE001 - one user's failure never stops the others
            delay = self._backoff(user_id, Retry("unexpected"))
            log.error("poll failed", extra={"error": type(exc).__name__, "retry_in_s": delay})
            metrics.DEFERRALS.labels("unexpected").inc()
            metrics.polled("retry", time.monotonic() - started)
            return PollResult(user_id, "retry")
        metrics.polled(result.outcome, time.monotonic() - started)
        if result.events:
            log.info("poll detected", extra={"events": len(result.events),
                                             "ms": round((time.monotonic() - started) * 1000, 1)})
        return result

    def _backoff(self, user_id: str, retry: Retry) -> float:
        try:
            failures = services.failures_of(self.engine, user_id) + (1 if retry.failed else 0)
            delay = min(self.interval_s * 2 ** max(failures - 1, 0), self.max_backoff_s)
            if retry.delay_s is not None:
                delay = max(delay, retry.delay_s)
            services.reschedule(self.engine, user_id, delay, retry.failed)
            return delay
        except Exception as exc:  # noqa: BLE001 - the lease brings the user back anyway
            log.warning("rescheduling failed", extra={"error": type(exc).__name__})
            return self.lease_s

    def _poll(self, user_id: str) -> PollResult:
        if self.push_topic:
            cursor = services.quiet_cursor(self.engine, user_id)
            if cursor is not None and self._guarded(user_id, lambda: self._quiet(user_id, cursor)):
                return PollResult(user_id, "polled")
        state = services.load_state(self.engine, user_id)
        if state is None:
            return PollResult(user_id, "gone")
        if not state.watches:
            services.commit_poll(self.engine, user_id, [], None, set(), self.interval_s, self.fallback_s)
            return PollResult(user_id, "polled")
        return self._guarded(user_id, lambda: self._read(state))

    def _quiet(self, user_id: str, cursor: int) -> bool:
        """The safety net's poll of a watched mailbox: 1 unit (getProfile) tells whether its history moved
        at all; True (and the next poll scheduled) when it did not."""
        gmail = self.gmail.for_user(user_id, (SCOPE_METADATA,))
        current = int(gmail.execute(gmail.users.getProfile(userId="me"))["historyId"])
        if current > cursor:
            return False
        if services.commit_quiet(self.engine, user_id, self.interval_s, self.fallback_s):
            self.wake.set()  # a push came during the check: read at once
        return True

    def _guarded(self, user_id: str, call: Callable[[], Any]) -> Any:
        """``call()``, its Gmail and token failures turned into ``Retry``."""
        try:
            return call()
        except Exception as exc:
            retry = self._retry_for(user_id, exc)
            if retry is None:
                raise
            raise retry from None

    def _read(self, state: MailboxState) -> PollResult:
        token = self.tokens.get(state.user_id, scopes=(SCOPE_METADATA,))
        # Metadata-only tokens: Gmail then refuses this service any message content, even by mistake.
        gmail = self.gmail.for_user(state.user_id, (SCOPE_METADATA,))
        own_email = (token.email or state.email).lower()
        return self._poll_mailbox(state, gmail, own_email)

    def _retry_for(self, user_id: str, exc: Exception) -> Retry | None:
        """What a failed Gmail call (or token fetch) means for the user; None for anything unexpected."""
        if isinstance(exc, NeedsReconnect):
            # Skipped until gmail.connected; the vault's gmail.disconnected event pauses the mailbox.
            return Retry("needs_reconnect", delay_s=self.max_backoff_s, failed=False, kind="grant_gone")
        if isinstance(exc, RefreshError):
            self.gmail.forget(user_id)
            return Retry("token_refused", delay_s=self.interval_s, kind="grant_gone")
        if isinstance(exc, VaultUnavailable):
            return Retry("vault_unavailable")
        if isinstance(exc, HttpError):
            status = int(getattr(exc.resp, "status", 0) or 0)
            if status == 429 or status >= 500 or (status == 403 and _rate_limit_reason(exc)):
                return Retry(f"gmail_{status}", delay_s=_retry_after(exc))
            if status == 401:
                self.gmail.forget(user_id)
                return Retry("gmail_401", kind="grant_gone")
            return Retry(f"gmail_{status}", kind="refused")
        if isinstance(exc, (TransportError, OSError, TimeoutError)):
            return Retry(f"gmail_unreachable:{type(exc).__name__}")
        return None

    def _poll_mailbox(self, state: MailboxState, gmail: UserGmail, own_email: str) -> PollResult:
        users = gmail.users
        watched = state.threads
        candidates: dict[str, _Candidate] = {}
        recheck = set(state.recheck_threads)
        new_cursor: int | None = None
        if state.cursor is None:
            new_cursor = int(gmail.execute(users.getProfile(userId="me"))["historyId"])
            recheck = set(watched)
        else:
            try:
                new_cursor = self._history(gmail, state.cursor, watched, candidates)
            except HttpError as exc:
                if int(getattr(exc.resp, "status", 0) or 0) != 404:
                    raise
                # The cursor is too old for Google. Take a fresh one before reading the threads, so a
                # message arriving in between is seen by the next history.list (and deduplicated).
                metrics.RESYNCS.inc()
                new_cursor = int(gmail.execute(users.getProfile(userId="me"))["historyId"])
                log.info("history cursor expired, re-checking threads",
                         extra={"user_id": state.user_id, "threads": len(watched)})
                recheck = set(watched)
        sequence_of = {w.thread_id: w.sequence_id for w in state.watches}
        for thread_id in sorted(recheck):
            with about(sequence_of.get(thread_id), thread_id=thread_id):
                self._thread(gmail, thread_id, candidates)

        decisions = self._decide(state, gmail, candidates, own_email)
        # A SENT message not (yet) claimed by the mailer is decided after the grace period: come back then
        # rather than after the (long) fallback interval.
        undecided = {p.message_id for p in state.pending} - {d.message_id for d in decisions if d.was_pending}
        waiting = bool(undecided) or any(d.outcome == "pending_sent" for d in decisions)
        events, again = services.commit_poll(self.engine, state.user_id, decisions, new_cursor, recheck,
                                             self.interval_s, self.fallback_s,
                                             self.takeover_grace_s + 0.5 if waiting else None)
        if again:
            self.wake.set()  # a push came during this poll, naming a change past what it read
        for decision in decisions:
            metrics.DETECTIONS.labels(decision.outcome).inc()
        for event in events:
            log.info("detection published", extra={"user_id": state.user_id, "event_type": event["type"],
                                                   "message_id": event["payload"]["message_id"],
                                                   "thread_id": event["payload"]["thread_id"]})
        return PollResult(state.user_id, "polled", tuple(events))

    def _history(self, gmail: UserGmail, cursor: int, watched: set[str], candidates: dict[str, _Candidate]) -> int:
        """Every page of messageAdded history after ``cursor``; returns the mailbox's newest history id."""
        newest = cursor
        page_token = None
        while True:
            kwargs: dict[str, Any] = {"userId": "me", "startHistoryId": str(cursor),
                                      "historyTypes": ["messageAdded"], "maxResults": _PAGE_SIZE}
            if page_token:
                kwargs["pageToken"] = page_token
            page = gmail.execute(gmail.users.history().list(**kwargs))
            for record in page.get("history") or []:
                for added in record.get("messagesAdded") or []:
                    message = added.get("message") or {}
                    thread_id = message.get("threadId")
                    if thread_id in watched and message.get("id"):
                        candidates.setdefault(
                            message["id"], _Candidate(thread_id, tuple(message.get("labelIds") or ()))
                        )
                newest = max(newest, int(record.get("id") or 0))
            newest = max(newest, int(page.get("historyId") or 0))
            page_token = page.get("nextPageToken")
            if not page_token:
                return newest

    def _thread(self, gmail: UserGmail, thread_id: str, candidates: dict[str, _Candidate]) -> None:
        try:
            thread = gmail.execute(gmail.users.threads().get(userId="me", id=thread_id, format="metadata",
                                                             metadataHeaders=["From"]))
        except HttpError as exc:
            if int(getattr(exc.resp, "status", 0) or 0) == 404:
                return  # the user deleted the thread: nothing left to read
            raise
        for message in thread.get("messages") or []:
            if message.get("id"):
                candidates[message["id"]] = _Candidate(
                    thread_id, tuple(message.get("labelIds") or ()), _from_header(message), True
                )

    def _decide(self, state: MailboxState, gmail: UserGmail, candidates: dict[str, _Candidate],
                own_email: str) -> list[Decision]:
        pending = {p.message_id: p for p in state.pending}
        sequence_of = {w.thread_id: w.sequence_id for w in state.watches}
        ids = [m for m, c in candidates.items() if "DRAFT" not in c.labels] + list(pending)
        seen, ours = services.known_ids(self.engine, state.user_id, ids)
        decisions: list[Decision] = []
        for message_id, candidate in candidates.items():
            if message_id in seen or message_id in pending or "DRAFT" in candidate.labels:
                continue
            if "SENT" in candidate.labels:
                outcome = "own" if message_id in ours else "pending_sent"
                decisions.append(Decision(message_id, candidate.thread_id, outcome))
                continue
            if not candidate.has_from:
                try:
                    with about(sequence_of.get(candidate.thread_id), thread_id=candidate.thread_id):
                        message = gmail.execute(gmail.users.messages().get(
                            userId="me", id=message_id, format="metadata", metadataHeaders=["From"]))
                except HttpError as exc:
                    if int(getattr(exc.resp, "status", 0) or 0) != 404:
                        raise
                    decisions.append(Decision(message_id, candidate.thread_id, "gone"))
                    continue
                candidate.from_value = _from_header(message)
            outcome = classify_received(candidate.from_value, own_email)
            decisions.append(Decision(message_id, candidate.thread_id, outcome))
            log.info("message classified", extra={"user_id": state.user_id, "message_id": message_id,
                                                  "thread_id": candidate.thread_id, "outcome": outcome})
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.takeover_grace_s)
        for message_id, item in pending.items():
            if message_id in ours:
                decisions.append(Decision(message_id, item.thread_id, "own", was_pending=True))
            elif item.seen_at <= cutoff and item.thread_id in state.threads:
                decisions.append(Decision(message_id, item.thread_id, "takeover", was_pending=True))
        return decisions

    # -- Gmail push: one user's watch, one queued stop --------------------------------------------------
    def watch_user(self, user_id: str) -> str:
        """Make or renew the user's ``users.watch``: ``watched``, ``gone`` (the mailbox went, or was paused,
        meanwhile: the new watch is queued for a stop unless the user was deleted) or ``failed``
        (recorded; retried with backoff)."""
        try:
            outcome = self._watch(user_id)
        except Exception as exc:  # noqa: BLE001 - the database comes back; the lease brings the watch back
            log.warning("gmail watch errored", extra={"error": type(exc).__name__})
            outcome = "error"
        metrics.WATCH_CALLS.labels("watch", outcome).inc()
        return outcome

    def _watch(self, user_id: str) -> str:
        body = {"topicName": self.push_topic, "labelIds": list(WATCH_LABELS), "labelFilterBehavior": "include"}
        try:
            gmail = self.gmail.for_user(user_id, (SCOPE_METADATA,))
            reply = gmail.execute(gmail.users.watch(userId="me", body=body))
            expires_at = dt.datetime.fromtimestamp(int(reply["expiration"]) / 1000, dt.UTC)
            history_id = int(reply.get("historyId") or 0) or None
        except Exception as exc:  # noqa: BLE001 - one user's failure never stops the others
            retry = self._retry_for(user_id, exc) or Retry(f"unexpected:{type(exc).__name__}")
            delay = services.watch_failed(self.engine, user_id, retry.reason, self.watch_retry_s,
                                          self.max_backoff_s, self.interval_s, retry.delay_s)
            # The reason is on the mailbox row (watch_error); no user id here: a deletion may be under way.
            log.warning("gmail watch failed", extra={"reason": retry.reason, "retry_in_s": delay})
            return "failed"
        kept = services.commit_watch(self.engine, user_id, expires_at, history_id, self.tombstone_key)
        if kept:
            self.wake.set()  # a new watch makes the mailbox due for one read
        return "watched" if kept else "gone"

    def stop_watch(self, item: StopItem) -> str:
        """Run one queued ``users.stop``: ``stopped``, ``grant_gone`` (the watch ended with the grant),
        ``refused``, ``superseded`` (the mailbox is wanted again: no stop), ``gave_up`` (after
        ``STOP_ATTEMPTS``) or ``retry``. A deletion's stop reports ``account.purged`` once done."""
        try:
            outcome = self._stop(item)
        except Exception as exc:  # noqa: BLE001 - the database comes back; the lease brings the stop back
            log.warning("gmail watch stop errored", extra={"error": type(exc).__name__})
            outcome = "error"
        metrics.WATCH_CALLS.labels("stop", outcome).inc()
        return outcome

    def _stop(self, item: StopItem) -> str:
        user_id = item.user_id
        if item.deletion_id is None and services.wants_watch(self.engine, user_id):
            services.finish_stop(self.engine, user_id, called_gmail=False)
            return "superseded"
        try:
            gmail = self.gmail.for_user(user_id, (SCOPE_METADATA,))
            gmail.execute(gmail.users.stop(userId="me"))
            outcome = "stopped"
        except Exception as exc:  # noqa: BLE001 - one user's failure never stops the others
            retry = self._retry_for(user_id, exc) or Retry(f"unexpected:{type(exc).__name__}")
            if retry.kind != "transient":
                outcome = retry.kind  # grant_gone or refused: nothing a retry could change
            elif item.attempts + 1 < STOP_ATTEMPTS:
                delay = max(min(2.0 ** item.attempts, _STOP_BACKOFF_CAP_S), retry.delay_s or 0.0)
                services.retry_stop(self.engine, user_id, delay)
                log.warning("gmail watch stop deferred", extra={"reason": retry.reason, "attempt": item.attempts + 1,
                                                                "retry_in_s": delay})
                return "retry"
            else:
                outcome = "gave_up"
        deletion_id = services.finish_stop(self.engine, user_id, called_gmail=outcome == "stopped")
        if outcome == "stopped" and not deletion_id:
            self.wake.set()  # a mailbox watched again meanwhile gets its watch back
        if item.deletion_id or deletion_id:
            self.gmail.forget(user_id)  # nothing of a deleted user stays in memory
        log.info("gmail watch stop done", extra={"outcome": outcome, "deletion_id": deletion_id or ""})
        return outcome


def _retry_after(exc: HttpError) -> float | None:
    value = (getattr(exc, "resp", None) or {}).get("retry-after")
    try:
        return float(value) if value else None
    except (TypeError, ValueError):
        return None


def _rate_limit_reason(exc: HttpError) -> bool:
    try:
        return "rateLimitExceeded" in exc.content.decode("utf-8", "replace") or (
            "userRateLimitExceeded" in exc.content.decode("utf-8", "replace"))
    except Exception:  # noqa: BLE001
        return False
