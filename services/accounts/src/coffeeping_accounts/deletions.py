"""Account deletion: the saga that the accounts service orchestrates over RabbitMQ.

0. The fence. ``request_deletion`` commits the deletion (one step per service) with
   ``account.deletion_requested`` in its outbox; the servicer then has the mailer fence the user
   (``Mailer.FenceUser``) before it answers 202. From then on nothing is sent or drafted for the user,
   and the account answers "deleted" (410 at the gateway) to everything but the deletion status,
   for good: a deleted user id never gets an account back.
1. The mailer and the reply watcher purge on ``account.deletion_requested``. The mailer deletes its
   rows at once and then removes the Gmail drafts it mirrored, retrying for a bounded time
   (``MAILER_DRAFT_CLEANUP_S``); its ``account.purged`` says how many drafts it could not remove.
2. On the mailer's ``account.purged`` it publishes ``account.revoke_requested``: the token vault
   revokes the grant at Google, retrying until Google confirms, and only then purges it.
3. When the mailer, the reply watcher and the vault have all reported ``account.purged``, it purges
   its own rows (the user record, its inbox and outbox entries) and buries the user, in the same
   transaction that marks the deletion completed.

Every service keeps a tombstone of a purged user (an HMAC of the user id, see
``coffeeping.common.tombstones``): its consumer drops any later event of that user, so a late,
redelivered or replayed event brings nothing back, and its dead-letter janitor drops their messages.

A step that a service reports as failed (``account.purge_failed``), or that reports nothing within the
deadline, is shown as failed. ``DELETE /v1/account`` (or the webhook) coming again restarts the failed
steps, and so does the operator (``python -m coffeeping_accounts retry-deletion <deletion_id>``).

What is kept afterwards is minimal and names nobody: the deletion id, a SHA-256 of the user id (so
the user can still read the status), the source, times and the steps' states and notes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import uuid
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert

from coffeeping.common.db import system_tx, user_tx, validate_user_id
from coffeeping.common.messaging import Event, Handler, consumed_by, forget_user, publish_in_tx
from coffeeping.common.notified_cache import notify
from coffeeping.common.tombstones import bury
from coffeeping.events.v1 import events_pb2 as ev
from coffeeping_accounts.models import deletion_requests, deletion_steps, deletions, users

log = logging.getLogger(__name__)

SCHEMA = "accounts"
# Notified with the user id when a deletion of their account is accepted (``services.KnownUsers``).
USERS_CHANNEL = "accounts_user_changed"
DELETION_REQUESTED = "account.deletion_requested"
REVOKE_REQUESTED = "account.revoke_requested"
CONSUMED = consumed_by("accounts")

MAILER, WATCHER, VAULT, ACCOUNTS = "mailer", "reply-watcher", "token-vault", "accounts"
# (service, what it does), in the order the status shows them.
STEPS = (
    (MAILER, "cancel scheduled sends, delete Gmail drafts, purge contacts, sequences and emails"),
    (WATCHER, "purge mailbox cursors and watched threads"),
    (VAULT, "revoke the Google grant, purge it and its keys"),
    (ACCOUNTS, "purge the user record"),
)
_REPORTING = (MAILER, WATCHER, VAULT)


class AccountDeleted(Exception):
    """The user's account is deleted or being deleted: nothing may be created or exported for it."""


class NoSuchDeletion(LookupError):
    pass


def subject_hash(user_id: str) -> str:
    """The non-identifying key of a user's deletions (the migration's policy computes the same)."""
    return hashlib.sha256(f"coffeeping-deletion:{validate_user_id(user_id)}".encode()).hexdigest()


def _key_hash(subject: str, key: str) -> str:
    return hashlib.sha256(f"{subject}:{key}".encode()).hexdigest()


@dataclass(frozen=True)
class Step:
    service: str
    step: str
    state: str
    attempts: int
    updated_at: dt.datetime
    error: str
    note: str = ""


@dataclass(frozen=True)
class Status:
    deletion_id: str
    state: str
    requested_at: dt.datetime
    completed_at: dt.datetime | None
    steps: list[Step] = field(default_factory=list)


def _status(conn: Connection, deletion_id: uuid.UUID) -> Status:
    row = conn.execute(select(deletions).where(deletions.c.deletion_id == deletion_id)).one()
    steps = conn.execute(
        select(deletion_steps).where(deletion_steps.c.deletion_id == deletion_id).order_by(deletion_steps.c.position)
    ).all()
    return Status(
        str(row.deletion_id), row.state, row.requested_at, row.completed_at,
        [Step(s.service, s.step, s.state, s.attempts, s.updated_at, s.error, s.note) for s in steps],
    )


def deleted(conn: Connection, user_id: str) -> bool:
    """True once a deletion of the user's account was accepted (running, failed or completed)."""
    found = conn.execute(
        select(deletions.c.deletion_id).where(deletions.c.subject_hash == subject_hash(user_id)).limit(1)
    ).first()
    return found is not None


def request_deletion(engine: Engine, user_id: str, source: str, idempotency_key: str = "") -> Status:
    """Start the deletion of the user's account, or return the one already accepted.

    A deletion that failed restarts from its failed steps. A request repeated with the same
    idempotency key (a replayed webhook) returns the deletion it started and starts nothing new.
    """
    subject = subject_hash(user_id)
    key = _key_hash(subject, idempotency_key) if idempotency_key else ""
    with user_tx(engine, user_id, system=True) as conn:
        if key:
            seen = conn.execute(
                select(deletion_requests.c.deletion_id).where(deletion_requests.c.key_hash == key)
            ).scalar_one_or_none()
            if seen is not None:
                return _status(conn, seen)
        latest = select(deletions.c.deletion_id, deletions.c.state).where(
            deletions.c.subject_hash == subject).order_by(deletions.c.requested_at.desc()).limit(1)
        row = conn.execute(latest.with_for_update()).first()
        if row is None:
            created = conn.execute(
                insert(deletions)
                .values(deletion_id=uuid.uuid4(), subject_hash=subject, user_id=user_id, source=source,
                        state="in_progress")
                # The partial unique index's predicate, as text: a literal, not a bound parameter, or
                # PostgreSQL cannot infer the arbiter index from a generic plan of a prepared statement.
                .on_conflict_do_nothing(index_elements=["subject_hash"], index_where=text("state <> 'completed'"))
                .returning(deletions.c.deletion_id)
            ).scalar_one_or_none()
            if created is not None:
                _start(conn, created, subject, user_id)
                log.info("account deletion requested", extra={"deletion_id": str(created), "source": source})
            row = conn.execute(latest).one()  # a concurrent request may have won the insert
        deletion_id = row.deletion_id
        if row.state == "failed":
            restarted = _restart(conn, deletion_id, user_id)
            log.info("failed deletion restarted", extra={"deletion_id": str(deletion_id), "steps": restarted})
        # Every accounts process forgets the user it may be serving from memory (``services.KNOWN_USERS``).
        conn.execute(notify(USERS_CHANNEL, user_id))
        if key:
            conn.execute(
                insert(deletion_requests)
                .values(key_hash=key, subject_hash=subject, deletion_id=deletion_id)
                .on_conflict_do_nothing(index_elements=["key_hash"])
            )
        return _status(conn, deletion_id)


def _start(conn: Connection, deletion_id: uuid.UUID, subject: str, user_id: str) -> None:
    conn.execute(
        insert(deletion_steps),
        [
            {"deletion_id": deletion_id, "service": service, "subject_hash": subject, "step": step,
             "state": "running" if service in (MAILER, WATCHER) else "pending",
             "attempts": 1 if service in (MAILER, WATCHER) else 0, "error": "", "position": position}
            for position, (service, step) in enumerate(STEPS)
        ],
    )
    publish_in_tx(conn, SCHEMA, user_id, ev.AccountDeletionRequested(deletion_id=str(deletion_id)))


def latest_status(engine: Engine, user_id: str) -> Status | None:
    """The user's most recent deletion; answerable after their data is gone."""
    with user_tx(engine, user_id) as conn:
        deletion_id = conn.execute(
            select(deletions.c.deletion_id)
            .where(deletions.c.subject_hash == subject_hash(user_id))
            .order_by(deletions.c.requested_at.desc())
            .limit(1)
        ).scalar_one_or_none()
        return _status(conn, deletion_id) if deletion_id is not None else None


# -- the saga's progress ---------------------------------------------------------------------------


def make_handler(tombstone_key: bytes) -> Handler:
    """Consumer handler for ``account.purged`` and ``account.purge_failed`` (inside its transaction)."""

    def handle(conn: Connection, event: Event) -> None:
        report = event.message
        if not isinstance(report, ev.AccountPurged | ev.AccountPurgeFailed):
            log.info("event ignored", extra={"event_id": event.id, "event_type": event.type})
            return
        user_id = event.user_id
        # The consumer has checked that the service named here is the message's verified sender.
        service = report.service if report.service in _REPORTING else None
        try:
            deletion_id = uuid.UUID(report.deletion_id)
        except ValueError:
            deletion_id = None
        if service is None or deletion_id is None:
            log.warning("deletion report ignored: unknown service or deletion id",
                        extra={"event_id": event.id, "event_type": event.type})
            return
        row = conn.execute(
            select(deletions.c.state).where(
                deletions.c.deletion_id == deletion_id, deletions.c.subject_hash == subject_hash(user_id)
            ).with_for_update()
        ).first()
        if row is None:
            log.warning("deletion report ignored: no such deletion", extra={"deletion_id": str(deletion_id)})
            return
        if row.state == "completed":
            # A late duplicate: the consumer has just recorded it in the inbox under the user's id.
            forget_user(conn, SCHEMA, user_id)
            return
        step = (deletion_steps.c.deletion_id == deletion_id, deletion_steps.c.service == service,
                deletion_steps.c.state != "done")
        if isinstance(report, ev.AccountPurged):
            conn.execute(update(deletion_steps).where(*step)
                         .values(state="done", error="", note=_note(report), updated_at=func.now()))
            log.info("deletion step done", extra={"deletion_id": str(deletion_id), "service": service})
        else:
            error = (report.error or "failed")[:200]
            conn.execute(update(deletion_steps).where(*step)
                         .values(state="failed", error=error, updated_at=func.now()))
            log.warning("deletion step failed", extra={"deletion_id": str(deletion_id), "service": service})
        _advance(conn, deletion_id, user_id, tombstone_key)

    return handle


def _note(report: ev.AccountPurged) -> str:
    """What the user should know about a done step: the Gmail drafts the mailer could not remove."""
    left = report.drafts_not_removed
    if left > 0:
        return f"{left} Gmail draft{'s' if left != 1 else ''} could not be removed; delete them in Gmail"
    return ""


def _advance(conn: Connection, deletion_id: uuid.UUID, user_id: str, tombstone_key: bytes) -> None:
    """Take the saga's next step from the steps' states (the deletion row is locked by the caller)."""
    states = dict(
        conn.execute(
            select(deletion_steps.c.service, deletion_steps.c.state).where(deletion_steps.c.deletion_id == deletion_id)
        ).all()
    )
    if states.get(MAILER) == "done" and states.get(VAULT) == "pending":
        publish_in_tx(conn, SCHEMA, user_id, ev.AccountRevokeRequested(deletion_id=str(deletion_id)))
        conn.execute(
            update(deletion_steps)
            .where(deletion_steps.c.deletion_id == deletion_id, deletion_steps.c.service == VAULT)
            .values(state="running", attempts=deletion_steps.c.attempts + 1, updated_at=func.now())
        )
        states[VAULT] = "running"
        log.info("grant revocation requested", extra={"deletion_id": str(deletion_id)})
    if all(states.get(service) == "done" for service in _REPORTING):
        conn.execute(delete(users).where(users.c.user_id == user_id))
        forget_user(conn, SCHEMA, user_id)
        bury(conn, SCHEMA, tombstone_key, user_id)
        conn.execute(
            update(deletion_steps)
            .where(deletion_steps.c.deletion_id == deletion_id, deletion_steps.c.service == ACCOUNTS)
            .values(state="done", attempts=deletion_steps.c.attempts + 1, error="", updated_at=func.now())
        )
        conn.execute(
            update(deletions)
            .where(deletions.c.deletion_id == deletion_id)
            .values(state="completed", completed_at=func.now(), user_id=None)
        )
        log.info("account deletion completed", extra={"deletion_id": str(deletion_id)})
        return
    state = "failed" if "failed" in states.values() else "in_progress"
    conn.execute(update(deletions).where(deletions.c.deletion_id == deletion_id).values(state=state))


def mark_overdue(engine: Engine, deadline_s: float) -> int:
    """Show as failed every step that has reported nothing within ``deadline_s`` of being requested.

    A step whose message went to the dead-letter queue reports nothing: this is what makes it visible
    instead of silently stuck. Returns how many steps were marked.
    """
    with system_tx(engine) as conn:
        marked = conn.execute(
            update(deletion_steps)
            .where(deletion_steps.c.state == "running",
                   deletion_steps.c.updated_at < func.now() - dt.timedelta(seconds=float(deadline_s)))
            .values(state="failed", error="no report within the deadline; an operator can retry it",
                    updated_at=func.now())
            .returning(deletion_steps.c.deletion_id, deletion_steps.c.service)
        ).all()
        for deletion_id in {row.deletion_id for row in marked}:
            conn.execute(
                update(deletions)
                .where(deletions.c.deletion_id == deletion_id, deletions.c.state == "in_progress")
                .values(state="failed")
            )
    for row in marked:
        log.warning("deletion step overdue, marked failed",
                    extra={"deletion_id": str(row.deletion_id), "service": row.service})
    return len(marked)


def retry(engine: Engine, deletion_id: str, tombstone_key: bytes) -> list[str]:
    """Republish every step of an unfinished deletion that has not reported done; return their services.

    For the operator. Duplicates are harmless: each service's purge is idempotent and a second report
    of a done step changes nothing.
    """
    try:
        wanted = uuid.UUID(deletion_id)
    except ValueError:
        raise NoSuchDeletion("not a deletion id") from None
    with system_tx(engine) as conn:
        row = conn.execute(
            select(deletions.c.user_id, deletions.c.state).where(deletions.c.deletion_id == wanted)
        ).first()
    if row is None or row.state == "completed" or not row.user_id:
        raise NoSuchDeletion("no unfinished deletion with this id")
    with user_tx(engine, row.user_id, system=True) as conn:
        conn.execute(select(deletions.c.deletion_id).where(deletions.c.deletion_id == wanted).with_for_update())
        again = _restart(conn, wanted, row.user_id, unfinished=("running", "failed"))
        _advance(conn, wanted, row.user_id, tombstone_key)
    log.info("deletion retried", extra={"deletion_id": str(wanted), "steps": again})
    return again


def _restart(conn: Connection, deletion_id: uuid.UUID, user_id: str,
             unfinished: tuple[str, ...] = ("failed",)) -> list[str]:
    """Publish again the request of every step in ``unfinished``; the deletion row is locked by the caller."""
    states = dict(
        conn.execute(
            select(deletion_steps.c.service, deletion_steps.c.state).where(deletion_steps.c.deletion_id == deletion_id)
        ).all()
    )
    again = [s for s in (MAILER, WATCHER) if states.get(s) in unfinished]
    if again:
        publish_in_tx(conn, SCHEMA, user_id, ev.AccountDeletionRequested(deletion_id=str(deletion_id)))
    if states.get(VAULT) in unfinished:
        publish_in_tx(conn, SCHEMA, user_id, ev.AccountRevokeRequested(deletion_id=str(deletion_id)))
        again.append(VAULT)
    if again:
        conn.execute(
            update(deletion_steps)
            .where(deletion_steps.c.deletion_id == deletion_id, deletion_steps.c.service.in_(again))
            .values(state="running", error="", attempts=deletion_steps.c.attempts + 1, updated_at=func.now())
        )
        conn.execute(update(deletions).where(deletions.c.deletion_id == deletion_id).values(state="in_progress"))
    return again
