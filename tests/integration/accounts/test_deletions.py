"""The deletion saga as the accounts service runs it: record, events, progress, completion, refusals."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import text

from coffeeping.common.db import user_tx
from coffeeping.common.tombstones import subject
from coffeeping.events.v1 import events_pb2 as ev
from coffeeping_accounts import deletions, services
from tests.integration.accounts.conftest import TOMBSTONE_KEY, wait_until

pytestmark = pytest.mark.timeout(120)


def events_for(broker, user_id: str, count: int) -> list[dict]:
    """The next ``count`` events the accounts service published for ``user_id``."""
    seen: list[dict] = []

    def enough() -> bool:
        seen.extend(e for e in broker.take(timeout=0.5) if e["user_id"] == user_id)
        return len(seen) >= count

    wait_until(enough, timeout=20)
    return seen


def step_states(engine, user_id: str) -> dict[str, str]:
    status = deletions.latest_status(engine, user_id)
    return {s.service: s.state for s in status.steps} if status else {}


def purge_all(broker, user_id: str, deletion_id: str) -> None:
    for service in ("mailer", "reply-watcher"):
        broker.report(user_id, ev.AccountPurged(deletion_id=deletion_id, service=service))
    events_for(broker, user_id, 1)  # the revoke request, once the mailer has reported
    broker.report(user_id, ev.AccountPurged(deletion_id=deletion_id, service="token-vault"))


def test_deletion_request_publishes_deletion_requested_and_blocks_sign_in(accounts_engine, saga, broker, user_id):
    services.get_or_create_user(accounts_engine, user_id)
    status = deletions.request_deletion(accounts_engine, user_id, "api")
    assert status.state == "in_progress"
    assert [s.service for s in status.steps] == ["mailer", "reply-watcher", "token-vault", "accounts"]
    assert {s.service: s.state for s in status.steps} == {
        "mailer": "running", "reply-watcher": "running", "token-vault": "pending", "accounts": "pending"}
    [event] = events_for(broker, user_id, 1)
    assert event["type"] == "account.deletion_requested"
    assert event["payload"] == {"deletion_id": status.deletion_id}
    with pytest.raises(deletions.AccountDeleted):
        services.get_or_create_user(accounts_engine, user_id)


def test_a_second_request_returns_the_running_deletion(accounts_engine, saga, broker, user_id):
    first = deletions.request_deletion(accounts_engine, user_id, "api")
    again = deletions.request_deletion(accounts_engine, user_id, "clerk_webhook", "svix:msg_1")
    assert again.deletion_id == first.deletion_id
    assert len(events_for(broker, user_id, 1)) == 1


def test_revoke_is_requested_only_after_the_mailer_reported(accounts_engine, saga, broker, user_id):
    status = deletions.request_deletion(accounts_engine, user_id, "api")
    events_for(broker, user_id, 1)
    broker.report(user_id, ev.AccountPurged(deletion_id=status.deletion_id, service="reply-watcher"))
    assert wait_until(lambda: step_states(accounts_engine, user_id)["reply-watcher"] == "done")
    assert broker.take(timeout=1.0) == [] or all(e["user_id"] != user_id for e in broker.take(timeout=0.5))
    assert step_states(accounts_engine, user_id)["token-vault"] == "pending"
    broker.report(user_id, ev.AccountPurged(deletion_id=status.deletion_id, service="mailer"))
    [revoke] = events_for(broker, user_id, 1)
    assert revoke["type"] == "account.revoke_requested"
    assert revoke["payload"] == {"deletion_id": status.deletion_id}
    assert step_states(accounts_engine, user_id)["token-vault"] == "running"


def test_all_reports_complete_the_deletion_and_leave_no_row_naming_the_user(
        accounts_engine, saga, broker, admin, user_id):
    services.get_or_create_user(accounts_engine, user_id)
    status = deletions.request_deletion(accounts_engine, user_id, "api")
    events_for(broker, user_id, 1)
    purge_all(broker, user_id, status.deletion_id)
    assert wait_until(lambda: deletions.latest_status(accounts_engine, user_id).state == "completed")
    final = deletions.latest_status(accounts_engine, user_id)
    assert {s.state for s in final.steps} == {"done"}
    assert final.completed_at is not None
    # Every table of the accounts schema, as the superuser: no column holds the user id.
    tables = admin("SELECT table_name FROM information_schema.tables WHERE table_schema = 'accounts'")
    for (table,) in tables:
        hits = admin(f"SELECT count(*) FROM accounts.{table} t WHERE t::text LIKE %s", f"%{user_id}%")
        assert hits == [(0,)], f"accounts.{table} still refers to the user"
    # A deleted user id never gets an account back, and the user is buried (as an HMAC, not the id).
    with pytest.raises(deletions.AccountDeleted):
        services.get_or_create_user(accounts_engine, user_id)
    [(buried,)] = admin("SELECT count(*) FROM accounts.tombstones WHERE subject = %s",
                        subject(TOMBSTONE_KEY, user_id))
    assert buried == 1


def test_duplicate_and_late_reports_are_harmless(accounts_engine, saga, broker, admin, user_id):
    status = deletions.request_deletion(accounts_engine, user_id, "api")
    events_for(broker, user_id, 1)
    event_id = str(uuid.uuid4())
    for _ in range(2):  # the same event delivered twice
        broker.report(user_id, ev.AccountPurged(deletion_id=status.deletion_id, service="mailer"),
                      event_id=event_id)
    broker.report(user_id, ev.AccountPurged(deletion_id=status.deletion_id, service="mailer"))
    revokes = events_for(broker, user_id, 1)
    assert [e["type"] for e in revokes] == ["account.revoke_requested"]
    broker.report(user_id, ev.AccountPurged(deletion_id=status.deletion_id, service="reply-watcher"))
    broker.report(user_id, ev.AccountPurged(deletion_id=status.deletion_id, service="token-vault"))
    assert wait_until(lambda: deletions.latest_status(accounts_engine, user_id).state == "completed")
    # A report arriving after completion changes nothing and leaves no trace of the user.
    late = broker.report(user_id, ev.AccountPurged(deletion_id=status.deletion_id, service="mailer"))
    assert wait_until(lambda: admin("SELECT count(*) FROM accounts.inbox WHERE event_id = %s", late) == [(0,)]
                      and saga.connected.is_set(), timeout=5)
    assert all(e["user_id"] != user_id for e in broker.take(timeout=1.0))
    assert deletions.latest_status(accounts_engine, user_id).state == "completed"
    assert admin("SELECT count(*) FROM accounts.inbox WHERE user_id = %s", user_id) == [(0,)]


def test_replayed_idempotency_key_after_completion_starts_nothing_new(accounts_engine, saga, broker, user_id):
    status = deletions.request_deletion(accounts_engine, user_id, "clerk_webhook", "svix:msg_replay")
    events_for(broker, user_id, 1)
    purge_all(broker, user_id, status.deletion_id)
    assert wait_until(lambda: deletions.latest_status(accounts_engine, user_id).state == "completed")
    again = deletions.request_deletion(accounts_engine, user_id, "clerk_webhook", "svix:msg_replay")
    assert again.deletion_id == status.deletion_id
    assert again.state == "completed"
    assert all(e["user_id"] != user_id for e in broker.take(timeout=1.0))


def test_reported_failure_is_shown_and_the_operator_retry_republishes_the_step(
        accounts_engine, saga, broker, isolated_database, user_id):
    status = deletions.request_deletion(accounts_engine, user_id, "api")
    events_for(broker, user_id, 1)
    broker.report(user_id, ev.AccountPurged(deletion_id=status.deletion_id, service="mailer"))
    events_for(broker, user_id, 1)  # revoke requested
    broker.report(user_id, ev.AccountPurgeFailed(deletion_id=status.deletion_id, service="token-vault",
                                                 error="google unreachable"))
    assert wait_until(lambda: deletions.latest_status(accounts_engine, user_id).state == "failed")
    vault = next(s for s in deletions.latest_status(accounts_engine, user_id).steps if s.service == "token-vault")
    assert (vault.state, vault.error, vault.attempts) == ("failed", "google unreachable", 1)

    env = {**os.environ, "DATABASE_URL": isolated_database.app_url("accounts"),
           "TOMBSTONE_KEY": TOMBSTONE_KEY.decode()}
    done = subprocess.run([sys.executable, "-m", "coffeeping_accounts", "retry-deletion", status.deletion_id],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # Every step not yet done is republished: the failed vault step and the silent watcher step.
    assert "token-vault" in done.stdout and "reply-watcher" in done.stdout and "mailer" not in done.stdout
    again = events_for(broker, user_id, 2)
    assert sorted(e["type"] for e in again) == ["account.deletion_requested", "account.revoke_requested"]
    retried = deletions.latest_status(accounts_engine, user_id)
    assert retried.state == "in_progress"
    assert {s.service: (s.state, s.attempts) for s in retried.steps}["token-vault"] == ("running", 2)
    broker.report(user_id, ev.AccountPurged(deletion_id=status.deletion_id, service="reply-watcher"))
    broker.report(user_id, ev.AccountPurged(deletion_id=status.deletion_id, service="token-vault"))
    assert wait_until(lambda: deletions.latest_status(accounts_engine, user_id).state == "completed")


def test_a_repeated_request_restarts_a_failed_deletion_from_its_failed_steps(accounts_engine, saga, broker,
                                                                              user_id):
    status = deletions.request_deletion(accounts_engine, user_id, "api")
    events_for(broker, user_id, 1)
    broker.report(user_id, ev.AccountPurged(deletion_id=status.deletion_id, service="reply-watcher"))
    broker.report(user_id, ev.AccountPurgeFailed(deletion_id=status.deletion_id, service="mailer",
                                                 error="gmail unreachable"))
    assert wait_until(lambda: deletions.latest_status(accounts_engine, user_id).state == "failed")
    again = deletions.request_deletion(accounts_engine, user_id, "clerk_webhook", "svix:msg_restart")
    assert again.deletion_id == status.deletion_id and again.state == "in_progress"
    assert {s.service: (s.state, s.attempts) for s in again.steps}["mailer"] == ("running", 2)
    [event] = events_for(broker, user_id, 1)
    assert event["type"] == "account.deletion_requested"
    # The mailer reports this time, with drafts it could not remove: done, and the status says so.
    broker.report(user_id, ev.AccountPurged(deletion_id=status.deletion_id, service="mailer", drafts_not_removed=2))
    [revoke] = events_for(broker, user_id, 1)
    assert revoke["type"] == "account.revoke_requested"
    mailer = next(s for s in deletions.latest_status(accounts_engine, user_id).steps if s.service == "mailer")
    assert mailer.state == "done" and mailer.note.startswith("2 Gmail drafts could not be removed")


def test_retry_of_an_unknown_or_finished_deletion_is_refused_in_one_line(isolated_database):
    env = {**os.environ, "DATABASE_URL": isolated_database.app_url("accounts"),
           "TOMBSTONE_KEY": TOMBSTONE_KEY.decode()}
    for argument in (str(uuid.uuid4()), "not-a-uuid"):
        done = subprocess.run([sys.executable, "-m", "coffeeping_accounts", "retry-deletion", argument],
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_a_step_silent_past_its_deadline_is_shown_failed(accounts_engine, user_id):
    status = deletions.request_deletion(accounts_engine, user_id, "api")
    with user_tx(accounts_engine, user_id) as conn:
        conn.execute(text("UPDATE accounts.deletion_steps SET updated_at = now() - interval '1 hour' "
                          "WHERE deletion_id = :d AND service = 'mailer'"), {"d": status.deletion_id})
    assert deletions.mark_overdue(accounts_engine, deadline_s=600) >= 1
    shown = deletions.latest_status(accounts_engine, user_id)
    assert shown.state == "failed"
    mailer = next(s for s in shown.steps if s.service == "mailer")
    assert mailer.state == "failed" and "deadline" in mailer.error
    assert next(s for s in shown.steps if s.service == "reply-watcher").state == "running"


def test_deletion_status_is_visible_to_its_user_only(accounts_engine, user_id):
    deletions.request_deletion(accounts_engine, user_id, "api")
    assert deletions.latest_status(accounts_engine, user_id) is not None
    assert deletions.latest_status(accounts_engine, "user_someone_else_entirely") is None
    with user_tx(accounts_engine, "user_someone_else_entirely") as conn:
        assert conn.execute(text("SELECT count(*) FROM accounts.deletions")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM accounts.deletion_steps")).scalar_one() == 0


def test_the_deletion_record_keeps_a_hash_not_the_user_id(accounts_engine, admin, user_id):
    status = deletions.request_deletion(accounts_engine, user_id, "clerk_webhook", "svix:msg_hash")
    [(subject,)] = admin("SELECT subject_hash FROM accounts.deletions WHERE deletion_id = %s", status.deletion_id)
    assert subject == deletions.subject_hash(user_id) and user_id not in subject
    [(key,)] = admin("SELECT key_hash FROM accounts.deletion_requests WHERE deletion_id = %s", status.deletion_id)
    assert "msg_hash" not in key
