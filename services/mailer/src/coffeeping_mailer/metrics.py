"""The mailer's metrics: how late the scheduler starts each due send, the sends made, the failed attempts by
reason, and (sampled from its tables) the jobs already due and the drafts waiting for removal."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Counter, Histogram
from sqlalchemy import Engine, func, select

from coffeeping.common.metrics.sampling import SAMPLER, Family, Reading, count_and_oldest, reading_tx
from coffeeping_mailer.models import draft_deletions, jobs

FIRST, FOLLOW_UP = "first", "follow_up"
LATENESS = Histogram(
    "coffeeping_mailer_schedule_lateness_seconds",
    "Time from a step's due time (its job's) to the start of its send, by step (first, follow_up)", ["step"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 14400))
SENDS = Counter("coffeeping_mailer_sends", "Emails sent (recorded as sent), by step (first, follow_up)", ["step"])
FAILURES = Counter(
    "coffeeping_mailer_send_failures",
    "Send attempts that did not send, by reason: rate_limited, gmail_unavailable, network, vault_unavailable "
    "(each retried later), disconnected (the user's sequences pause), rejected, unsafe_header, gave_up "
    "(the step failed) and internal (a bug or a database error; retried)", ["reason"])
REASONS = ("rate_limited", "gmail_unavailable", "network", "vault_unavailable", "disconnected", "rejected",
           "unsafe_header", "gave_up", "internal")

SCHEDULE = (
    Family("coffeeping_mailer_jobs_due", "Scheduled steps whose due time has passed (those being sent included)"),
    Family("coffeeping_mailer_oldest_due_job_age_seconds", "How long the oldest due step has been due (0 when none)"),
    Family("coffeeping_mailer_draft_deletions_pending", "Gmail drafts queued for removal (stops, contact and "
           "account deletions)"),
)

_lateness = {step: LATENESS.labels(step) for step in (FIRST, FOLLOW_UP)}
_sends = {step: SENDS.labels(step) for step in (FIRST, FOLLOW_UP)}
_failures = {reason: FAILURES.labels(reason) for reason in REASONS}


def step_kind(position: int) -> str:
    return FIRST if position == 0 else FOLLOW_UP


def late_by(position: int, seconds: float) -> None:
    _lateness[step_kind(position)].observe(max(0.0, seconds))


def sent(position: int) -> None:
    _sends[step_kind(position)].inc()


def failed(reason: str) -> None:
    _failures[reason if reason in _failures else "internal"].inc()


def transient_reason(reason: str) -> str:
    """The failure enum of a ``Transient``'s reason text (``gmail 429``, ``network: ...``, ``vault ...``)."""
    if reason.startswith(("gmail 429", "gmail 403")):
        return "rate_limited"
    if reason.startswith("gmail "):
        return "gmail_unavailable"
    if reason.startswith("network"):
        return "network"
    if reason.startswith("vault"):
        return "vault_unavailable"
    return "internal"


def watch_schedule(engine: Engine) -> None:
    """Sample the jobs already due and the drafts waiting for removal (a scheduler that stalls shows here
    even though it sends nothing, so observes no lateness)."""
    due = count_and_oldest(jobs.c.due_at, jobs.c.due_at <= func.now())
    queued = select(func.count()).select_from(draft_deletions)

    def read() -> Iterator[Reading]:
        with reading_tx(engine) as conn:
            count, age = conn.execute(due).one()
            drafts = conn.execute(queued).scalar_one()
        yield Reading("coffeeping_mailer_jobs_due", float(count))
        yield Reading("coffeeping_mailer_oldest_due_job_age_seconds", max(0.0, float(age)))
        yield Reading("coffeeping_mailer_draft_deletions_pending", float(drafts))

    SAMPLER.add("mailer-schedule", SCHEDULE, read)


__all__ = ["FAILURES", "LATENESS", "REASONS", "SCHEDULE", "SENDS", "failed", "late_by", "sent", "step_kind",
           "transient_reason", "watch_schedule"]
