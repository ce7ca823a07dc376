"""The reply watcher's metrics: each mailbox poll's time (the watcher's cycle) and outcome, history cursors
Google had forgotten (resyncs), detections, deferred polls, Gmail push notifications received, watch calls,
and (sampled) how far behind the polls are."""

from __future__ import annotations

from prometheus_client import Counter, Histogram
from sqlalchemy import Engine, func

from coffeeping.common.metrics.sampling import Family, watch_rows
from coffeeping_reply_watcher.models import mailboxes

POLL_OUTCOMES = ("polled", "retry", "gone")
POLL = Histogram(
    "coffeeping_watcher_poll_duration_seconds",
    "Time to poll one mailbox (history, the threads and messages it names, the commit), by outcome "
    "(polled, retry: deferred, gone: the mailbox went meanwhile)", ["outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
RESYNCS = Counter("coffeeping_watcher_history_resyncs",
                  "history.list 404s: the mailbox's cursor was too old for Google and its threads were re-read")
DETECTIONS = Counter("coffeeping_watcher_detections", "Messages classified in watched threads, by outcome "
                     "(reply, bounce, takeover stop a sequence; self, own, gone, pending_sent do not)", ["outcome"])
DEFERRALS = Counter("coffeeping_watcher_poll_deferrals", "Polls deferred with backoff, by kind (transient: "
                    "rate limit or outage, grant_gone, refused, unexpected)", ["kind"])
PUSHES = Counter("coffeeping_watcher_push_notifications", "Gmail push notifications passed on by the gateway "
                 "(CheckMailbox), by outcome (scheduled: a watched mailbox is read now, ignored)", ["outcome"])
WATCH_CALLS = Counter("coffeeping_watcher_watch_calls", "users.watch and users.stop calls for Gmail push, by "
                      "call (watch, stop) and outcome", ["call", "outcome"])

BACKLOG = (
    Family("coffeeping_watcher_polls_due", "Mailboxes due for a poll and not yet taken"),
    Family("coffeeping_watcher_oldest_due_poll_age_seconds",
           "How long the most overdue mailbox has been due for its poll (0 when none)"),
)

_polls = {outcome: POLL.labels(outcome) for outcome in POLL_OUTCOMES}


def polled(outcome: str, seconds: float) -> None:
    child = _polls.get(outcome)
    (child or POLL.labels("other")).observe(seconds)


def watch_backlog(engine: Engine) -> None:
    """Sample the mailboxes already due (a lease moves a taken one ahead, so these wait for a poller)."""
    watch_rows("watcher-backlog", engine, BACKLOG, mailboxes.c.due_at, ~mailboxes.c.paused,
               mailboxes.c.due_at <= func.now())


__all__ = ["BACKLOG", "DEFERRALS", "DETECTIONS", "POLL", "PUSHES", "RESYNCS", "WATCH_CALLS", "polled",
           "watch_backlog"]
