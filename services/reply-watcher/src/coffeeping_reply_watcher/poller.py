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
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Any

from google.auth.exceptions import RefreshError, TransportError
from googleapiclient.errors import HttpError
from sqlalchemy import Engine

from coffeeping.common.gmail import (
    SCOPE_METADATA,
    GmailClients,
    NeedsReconnect,
    UserGmail,
    VaultTokenSource,
    VaultUnavailable,
    classify_received,
)
from coffeeping_reply_watcher import services
from coffeeping_reply_watcher.services import Decision, MailboxState

log = logging.getLogger(__name__)

_PAGE_SIZE = 500

def _from_header(message: dict) -> str | None:
    for header in (message.get("payload") or {}).get("headers") or []:
        if str(header.get("name", "")).lower() == "from":
            return str(header.get("value", ""))
    return None


class Retry(Exception):
    """The poll could not finish; try the user again after ``delay_s`` (``failed``: count a failure)."""

    def __init__(self, reason: str, delay_s: float | None = None, failed: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay_s = delay_s
        self.failed = failed


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
        self.gmail = gmail or GmailClients(gmail_endpoint, tokens, timeout_s=gmail_timeout_s)
        self.wake = threading.Event()  # set by CheckMailbox to look for due mailboxes at once

    # -- the loop -------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Claim due mailboxes and poll them on a thread pool until ``stop`` is set."""
        tick = min(1.0, max(0.05, self.interval_s / 4))
        inflight: set[futures.Future] = set()
        with futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="watcher-poll") as pool:
            while not stop.is_set():
                inflight = {f for f in inflight if not f.done()}
                free = self.concurrency - len(inflight)
                claimed: list[str] = []
                if free > 0:
                    try:
                        claimed = services.claim_due(self.engine, free, self.lease_s)
                    except Exception as exc:  # noqa: BLE001 - the database comes back; keep the loop alive
                        log.warning("claiming due mailboxes failed", extra={"error": type(exc).__name__})
                        stop.wait(tick * 4)
                for user_id in claimed:
                    inflight.add(pool.submit(self.poll_user, user_id))
                if len(inflight) >= self.concurrency:
                    futures.wait(inflight, timeout=tick, return_when=futures.FIRST_COMPLETED)
                else:
                    # Everything due is taken: look again after a tick, or at once when a push wakes us.
                    self.wake.wait(tick)
                    self.wake.clear()
            futures.wait(inflight, timeout=self.lease_s)

    def poll_due_once(self) -> list[PollResult]:
        """Poll every mailbox due now, ``concurrency`` at a time, and return (tests, benchmarks)."""
        results: list[PollResult] = []
        with futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="watcher-poll") as pool:
            while True:
                claimed = services.claim_due(self.engine, self.concurrency * 4, self.lease_s)
                if not claimed:
                    return results
                results.extend(pool.map(self.poll_user, claimed))

    # -- one user -------------------------------------------------------------------------------------
    def poll_user(self, user_id: str) -> PollResult:
        started = time.monotonic()
        try:
            result = self._poll(user_id)
        except Retry as retry:
            delay = self._backoff(user_id, retry)
            log.warning("poll deferred", extra={"reason": retry.reason, "retry_in_s": delay})
            return PollResult(user_id, "retry")
        except Exception as exc:  # noqa: BLE001 - one user's failure never stops the others
            delay = self._backoff(user_id, Retry("unexpected"))
            log.error("poll failed", extra={"error": type(exc).__name__, "retry_in_s": delay})
            return PollResult(user_id, "retry")
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
        state = services.load_state(self.engine, user_id)
        if state is None:
            return PollResult(user_id, "gone")
        if not state.watches:
            services.commit_poll(self.engine, user_id, [], None, set(), self.interval_s)
            return PollResult(user_id, "polled")
        try:
            token = self.tokens.get(user_id, scopes=(SCOPE_METADATA,))
            # Metadata-only tokens: Gmail then refuses this service any message content, even by mistake.
            gmail = self.gmail.for_user(user_id, (SCOPE_METADATA,))
            own_email = (token.email or state.email).lower()
            return self._poll_mailbox(state, gmail, own_email)
        except NeedsReconnect:
            # Skipped until gmail.connected; the vault's gmail.disconnected event pauses the mailbox.
            raise Retry("needs_reconnect", delay_s=self.max_backoff_s, failed=False) from None
        except RefreshError:
            self.gmail.forget(user_id)
            raise Retry("token_refused", delay_s=self.interval_s) from None
        except VaultUnavailable:
            raise Retry("vault_unavailable") from None
        except HttpError as exc:
            status = int(getattr(exc.resp, "status", 0) or 0)
            if status == 429 or status >= 500 or (status == 403 and _rate_limit_reason(exc)):
                raise Retry(f"gmail_{status}", delay_s=_retry_after(exc)) from None
            if status == 401:
                self.gmail.forget(user_id)
            raise Retry(f"gmail_{status}") from None
        except (TransportError, OSError, TimeoutError) as exc:
            raise Retry(f"gmail_unreachable:{type(exc).__name__}") from None

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
                new_cursor = int(gmail.execute(users.getProfile(userId="me"))["historyId"])
                log.info("history cursor expired, re-checking threads",
                         extra={"user_id": state.user_id, "threads": len(watched)})
                recheck = set(watched)
        for thread_id in sorted(recheck):
            self._thread(gmail, thread_id, candidates)

        decisions = self._decide(state, gmail, candidates, own_email)
        events = services.commit_poll(self.engine, state.user_id, decisions, new_cursor, recheck, self.interval_s)
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
                    message = gmail.execute(gmail.users.messages().get(userId="me", id=message_id, format="metadata",
                                                                       metadataHeaders=["From"]))
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
