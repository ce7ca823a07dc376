"""Exactly once: a mailer killed (SIGKILL) in the middle of a send, and two mailers side by side.

The sandbox applies its latency before it handles a request, so a mailer killed while it waits for
``drafts.send`` or ``messages.send`` leaves a send that still happens at Gmail after the process died:
the worst case for a crash (sent, not recorded). The next mailer must record it, not send it again.
"""

from __future__ import annotations

import time
import uuid

from tests.integration.mailer.conftest import Api, contact_email, wait_for


def _step(db, seq_id, position):
    return db.execute("SELECT status, gmail_message_id, draft_id, thread_id FROM mailer.steps "
                      "WHERE sequence_id = %s AND position = %s", (seq_id, position)).fetchone()


def _new_user(vault):
    suffix = uuid.uuid4().hex[:10]
    user_id, email = f"user_{suffix}", f"sender.{suffix}@gmail.com"
    vault[0].connect(user_id, email)
    return user_id, email


def _sequence(api, user_id, follow_ups):
    status, contact = api(user_id, "contacts.create", {"email": contact_email()})
    assert status == 201
    status, seq = api(user_id, "sequences.create", {"contact_id": contact["id"], "subject": "Hi", "body": "First",
                                                    "follow_ups": follow_ups})
    assert status == 201
    assert api(user_id, "sequences.send", sequence_id=seq["id"])[0] == 202
    return seq


def _sent_in_thread(sandbox, email, thread_id):
    box = sandbox.gmail.mailbox(email)
    thread = next(t for t in box["threads"] if t["id"] == thread_id)
    return [m for m in thread["messages"] if "SENT" in m["labelIds"]]


def test_mailer_killed_during_drafts_send_leaves_the_follow_up_sent_exactly_once(
        mailer_factory, certs, sandbox, vault, db):
    user_id, email = _new_user(vault)
    first = mailer_factory(MAILER_SCHEDULER_WORKERS="1")
    api = Api(f"127.0.0.1:{first.port}", certs)
    seq = _sequence(api, user_id, [{"body": "Follow-up", "delay": "PT2S"}])
    assert wait_for(lambda: _step(db, seq["id"], 1)[2])  # the draft exists
    sandbox.control.set_latency(3.0, "gmail.drafts.send")
    try:
        assert wait_for(lambda: _step(db, seq["id"], 1)[0] == "sending", timeout=20)
        time.sleep(0.5)
        first.kill()
        time.sleep(3.0)  # the sandbox finishes the send the dead process asked for
    finally:
        sandbox.control.set_latency(0.0, "gmail.drafts.send")
    thread_id = _step(db, seq["id"], 0)[3]
    assert len(_sent_in_thread(sandbox, email, thread_id)) == 2
    second = mailer_factory(MAILER_SCHEDULER_WORKERS="1")
    try:
        assert wait_for(lambda: _step(db, seq["id"], 1)[0] == "sent", timeout=30)
        sent = _sent_in_thread(sandbox, email, thread_id)
        assert len(sent) == 2
        assert _step(db, seq["id"], 1)[1] == sent[1]["id"]
        status = db.execute("SELECT status FROM mailer.sequences WHERE id = %s", (seq["id"],)).fetchone()[0]
        assert status == "completed"
    finally:
        second.stop()


def test_mailer_killed_during_the_first_messages_send_does_not_send_it_twice(
        mailer_factory, certs, sandbox, vault, db):
    user_id, email = _new_user(vault)
    first = mailer_factory(MAILER_SCHEDULER_WORKERS="1")
    api = Api(f"127.0.0.1:{first.port}", certs)
    sandbox.control.set_latency(3.0, "gmail.messages.send")
    try:
        seq = _sequence(api, user_id, [{"body": "Later", "delay": "P1D"}])
        assert wait_for(lambda: _step(db, seq["id"], 0)[0] == "sending", timeout=20)
        time.sleep(0.5)
        first.kill()
        time.sleep(3.0)
    finally:
        sandbox.control.set_latency(0.0, "gmail.messages.send")
    assert len(sandbox.gmail.mailbox(email)["threads"]) == 1
    second = mailer_factory(MAILER_SCHEDULER_WORKERS="1")
    try:
        assert wait_for(lambda: _step(db, seq["id"], 0)[0] == "sent", timeout=30)
        assert wait_for(lambda: _step(db, seq["id"], 1)[2], timeout=10)  # its follow-up draft, once
        box = sandbox.gmail.mailbox(email)
        assert len(box["threads"]) == 1
        sent = [m for m in box["threads"][0]["messages"] if "SENT" in m["labelIds"]]
        assert len(sent) == 1 and _step(db, seq["id"], 0)[1] == sent[0]["id"]
        assert len(box["drafts"]) == 1
    finally:
        second.stop()


def test_two_mailers_send_every_follow_up_exactly_once(mailer_factory, certs, sandbox, vault, db):
    mailers = [mailer_factory(MAILER_SCHEDULER_WORKERS="4") for _ in range(2)]
    try:
        apis = [Api(f"127.0.0.1:{m.port}", certs) for m in mailers]
        users = [_new_user(vault) for _ in range(4)]
        sequences = []
        for i in range(16):
            user_id, email = users[i % 4]
            seq = _sequence(apis[i % 2], user_id, [{"body": "one", "delay": "PT1S"}, {"body": "two", "delay": "PT1S"}])
            sequences.append((seq["id"], email))

        def all_done():
            ids = [s for s, _ in sequences]
            rows = db.execute("SELECT count(*) FROM mailer.sequences WHERE id = ANY(%s::uuid[]) "
                              "AND status = 'completed'", (ids,)).fetchone()[0]
            return rows == len(ids)

        assert wait_for(all_done, timeout=60)
        for seq_id, email in sequences:
            thread_id = _step(db, seq_id, 0)[3]
            assert [m["body"].strip() for m in _sent_in_thread(sandbox, email, thread_id)] == ["First", "one", "two"]
    finally:
        for proc in mailers:
            proc.stop()


def test_daily_cap_defers_sends_beyond_it_to_a_later_window(mailer_factory, certs, vault, db):
    proc = mailer_factory(MAILER_DAILY_CAP="1")
    try:
        api = Api(f"127.0.0.1:{proc.port}", certs)
        user_id, _ = _new_user(vault)
        seq = _sequence(api, user_id, [{"body": "over the cap", "delay": "PT1S"}])

        def deferred():
            return db.execute("SELECT last_error, status, due_at FROM mailer.steps WHERE sequence_id = %s "
                              "AND position = 1 AND last_error IS NOT NULL", (seq["id"],)).fetchone()

        row = wait_for(deferred, timeout=20)
        assert row and row[0] == "daily cap reached; deferred" and row[1] == "scheduled"
        due = db.execute("SELECT due_at FROM mailer.jobs WHERE sequence_id = %s", (seq["id"],)).fetchone()[0]
        sent_at = db.execute("SELECT sent_at FROM mailer.steps WHERE sequence_id = %s AND position = 0",
                             (seq["id"],)).fetchone()[0]
        assert (due - sent_at).total_seconds() >= 24 * 3600
    finally:
        proc.stop()
