"""The accounts service's metrics, sampled from the deletion saga's tables: deletions by state, the age of
the oldest unfinished one (the bound docs/RUNBOOK.md's alert holds it to), and the unfinished deletions'
steps by service and state (which service a deletion waits for)."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Engine, func, select

from coffeeping.common.metrics.sampling import SAMPLER, Family, Reading, count_and_oldest, reading_tx
from coffeeping_accounts.models import deletion_steps, deletions

STATES = ("in_progress", "failed", "completed")
DELETIONS = (
    Family("coffeeping_accounts_deletions", "Account deletions, by state (in_progress, failed, completed)",
           ("state",)),
    Family("coffeeping_accounts_deletion_oldest_unfinished_age_seconds",
           "Age of the oldest deletion not completed (in progress or failed; 0 when none)"),
    Family("coffeeping_accounts_deletion_steps_unfinished",
           "Steps of the deletions not completed, by service and state (pending, running, done, failed)",
           ("service", "state")),
)


def watch_deletions(engine: Engine) -> None:
    by_state = select(deletions.c.state, func.count()).group_by(deletions.c.state)
    unfinished = deletions.c.state != "completed"
    oldest = count_and_oldest(deletions.c.requested_at, unfinished)
    steps = (select(deletion_steps.c.service, deletion_steps.c.state, func.count())
             .join_from(deletion_steps, deletions, deletions.c.deletion_id == deletion_steps.c.deletion_id)
             .where(unfinished).group_by(deletion_steps.c.service, deletion_steps.c.state))

    def read() -> Iterator[Reading]:
        with reading_tx(engine) as conn:
            counts = dict(conn.execute(by_state).tuples().all())
            _, age = conn.execute(oldest).one()
            step_counts = conn.execute(steps).all()
        for state in sorted({*STATES, *counts}):
            yield Reading("coffeeping_accounts_deletions", float(counts.get(state, 0)), (state,))
        yield Reading("coffeeping_accounts_deletion_oldest_unfinished_age_seconds", max(0.0, float(age)))
        for service, state, count in step_counts:
            yield Reading("coffeeping_accounts_deletion_steps_unfinished", float(count), (service, state))

    SAMPLER.add("accounts-deletions", DELETIONS, read)


__all__ = ["DELETIONS", "watch_deletions"]
