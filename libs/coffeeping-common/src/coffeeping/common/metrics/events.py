"""What the consumer observes of each delivery: the event's age (now minus its envelope's ``occurred_at``)
and what came of it. Kept apart from ``messaging`` (sampling), which imports the messaging package that
imports this module."""

from __future__ import annotations

import datetime as dt
from typing import Any

from prometheus_client import Counter, Histogram

EVENT_AGE = Histogram(
    "coffeeping_event_age_seconds",
    "Time from an event's occurrence (its envelope's occurred_at) to its delivery to this consumer, by type",
    ["event_type"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600))
CONSUMED = Counter(
    "coffeeping_events_consumed",
    "Deliveries taken by this service's consumer, by event type and outcome (handled, duplicate, dropped: "
    "a deleted account's, requeued: the handler failed, refused: not from its registered producer, "
    "malformed: dead-lettered at once)", ["event_type", "outcome"])

UNKNOWN_TYPE = "unknown"  # the type label of a message whose envelope could not be read


def event_age_s(occurred_at: str, now: dt.datetime | None = None) -> float | None:
    """Seconds since an envelope's ``occurred_at`` (ISO 8601), or None when it has none or it is unreadable."""
    if not occurred_at:
        return None
    try:
        when = dt.datetime.fromisoformat(occurred_at)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, ((now or dt.datetime.now(dt.UTC)) - when).total_seconds())


# Children by label values, looked up once (the types are the registry's, the outcomes a fixed few).
_ages: dict[str, Any] = {}
_outcomes: dict[tuple[str, str], Any] = {}


def delivered(event_type: str, occurred_at: str) -> None:
    """Observe the age of an event as it is delivered (nothing for an envelope without a readable time)."""
    age = event_age_s(occurred_at)
    if age is None:
        return
    child = _ages.get(event_type)
    if child is None:
        child = _ages[event_type] = EVENT_AGE.labels(event_type)
    child.observe(age)


def consumed(event_type: str, outcome: str) -> None:
    """Count what came of a delivery."""
    key = (event_type, outcome)
    child = _outcomes.get(key)
    if child is None:
        child = _outcomes[key] = CONSUMED.labels(event_type, outcome)
    child.inc()


__all__ = ["CONSUMED", "EVENT_AGE", "UNKNOWN_TYPE", "consumed", "delivered", "event_age_s"]
