"""The poll against the sandbox's Gmail: what counts as a reply, what never does, and what it costs."""

from __future__ import annotations

import time

from bench.watcher_harness import (
    create_follow_up_draft,
    first_message_id_header,
    mailer_token,
    new_id,
    send_draft,
    send_first_email,
)
from coffeeping.events.v1 import events_pb2 as ev


def draft_in_thread(world, seq, token):
    header = first_message_id_header(world.sandbox.gmail, world.email, seq.thread_id)
    return create_follow_up_draft(world.sandbox.google_url, token, seq, in_reply_to=header)


def start(world, contact_email: str | None = None, contact_id: str | None = None):
    seq = send_first_email(world.sandbox.gmail, world.user_id, world.email,
                           contact_email or f"{new_id('c')}@contact.example", contact_id)
    world.event(seq.started())
    world.event(seq.sent())
    return seq


def test_a_contact_reply_publishes_reply_detected_naming_every_sequence_of_that_contact(world):
    contact = new_id("contact")
    first = start(world, "dana@contact.example", contact)
    second = start(world, "dana@contact.example", contact)
    other = start(world, "erin@contact.example")
    assert world.poll() == []

    reply = world.sandbox.gmail.deliver(world.email, "Dana <dana@contact.example>", thread_id=second.thread_id,
                                        body="Sure, Tuesday works")
    events = world.poll()

    assert [e["type"] for e in events] == ["reply.detected"]
    payload = events[0]["payload"]
    assert payload["contact_id"] == contact
    assert payload["sequence_ids"] == sorted([first.sequence_id, second.sequence_id])
    assert payload["thread_id"] == second.thread_id and payload["message_id"] == reply["id"]
    assert [e["payload"] for e in world.outbox("reply.detected")] == [payload]
    # The contact's threads are no longer watched; the other contact's still is.
    watched = world.admin_rows("SELECT sequence_id FROM watcher.watches WHERE user_id = %s", world.user_id)
    assert watched == [(other.sequence_id,)]


def test_our_own_first_email_follow_ups_and_their_drafts_never_count_as_a_reply(world):
    seq = start(world)
    token = mailer_token(world.sandbox, world.email)
    draft = draft_in_thread(world, seq, token)
    assert world.poll() == []
    follow_up = send_draft(world.sandbox.google_url, token, draft)
    world.event(seq.sent(follow_up))
    assert world.poll() == []
    assert world.poll() == []
    assert world.outbox() == []
    outcomes = dict(world.admin_rows("SELECT message_id, outcome FROM watcher.seen_messages WHERE user_id = %s",
                                     world.user_id))
    assert outcomes == {seq.message_id: "own", follow_up: "own"}


def test_a_sent_message_coffeeping_did_not_send_is_a_takeover_after_the_grace_period(world):
    seq = start(world)
    typed = world.sandbox.gmail.user_send(world.email, thread_id=seq.thread_id, body="Let me take this one")
    assert world.poll() == []  # first sight: the mailer's event may still be on its way
    events = world.poll()
    assert [e["type"] for e in events] == ["takeover.detected"]
    assert events[0]["payload"]["message_id"] == typed["id"]
    assert events[0]["payload"]["sequence_ids"] == [seq.sequence_id]


def test_a_sent_message_reported_by_the_mailer_after_the_poll_saw_it_is_ours_not_a_takeover(world):
    seq = start(world)
    token = mailer_token(world.sandbox, world.email)
    late = send_draft(world.sandbox.google_url, token, draft_in_thread(world, seq, token))
    poller = world.poller(takeover_grace_s=3600)
    assert world.poll(poller) == []
    world.event(seq.sent(late))
    assert world.poll() == []  # grace 0 now: it would be a takeover had the mailer not claimed it
    assert world.outbox() == []


def test_a_bounce_from_mailer_daemon_publishes_bounce_detected(world):
    seq = start(world)
    bounce = world.sandbox.gmail.deliver(world.email, "", thread_id=seq.thread_id, kind="bounce")
    events = world.poll()
    assert [(e["type"], e["payload"]["message_id"]) for e in events] == [("bounce.detected", bounce["id"])]


def test_a_postmaster_notice_is_a_bounce_too(world):
    seq = start(world)
    world.sandbox.gmail.deliver(world.email, "postmaster@contact.example", thread_id=seq.thread_id,
                                subject="Undeliverable")
    assert [e["type"] for e in world.poll()] == ["bounce.detected"]


def test_an_out_of_office_auto_reply_counts_as_a_reply(world):
    seq = start(world, "olga@contact.example")
    world.sandbox.gmail.deliver(world.email, "Olga <olga@contact.example>", thread_id=seq.thread_id,
                                kind="auto_reply", body="I am away until Monday")
    assert [e["type"] for e in world.poll()] == ["reply.detected"]


def test_a_message_from_the_users_own_address_that_is_not_sent_is_ignored(world):
    seq = start(world)
    world.sandbox.gmail.deliver(world.email, world.email.upper(), thread_id=seq.thread_id)
    assert world.poll() == []
    assert world.outbox() == []


def test_messages_in_threads_nobody_watches_are_never_read(world):
    start(world)
    since = time.time()
    world.sandbox.gmail.deliver(world.email, "someone@else.example", subject="Unrelated newsletter")
    assert world.poll() == []
    methods = [e["method"] for e in world.gmail_requests(since)]
    assert methods == ["gmail.history.list"]


def test_an_idle_poll_costs_one_history_list_of_two_quota_units(world):
    start(world)
    world.poll()  # the first poll reads our own first email's metadata-free history entry
    before = world.sandbox.gmail.quota(world.email)
    assert world.poll() == []
    after = world.sandbox.gmail.quota(world.email)
    assert after["units_used"] - before["units_used"] == 2
    assert after["calls"].get("history.list", 0) - before["calls"].get("history.list", 0) == 1
    assert after["calls"].get("getProfile", 0) == before["calls"].get("getProfile", 0)


def test_the_cursor_only_moves_forward_and_follows_the_mailbox(world):
    seq = start(world)
    world.poll()
    cursor = world.mailbox()["history_id"]
    assert cursor == int(world.sandbox.gmail.mailbox(world.email)["historyId"])
    # A second sequence started from an older history id never rewinds the cursor.
    older = send_first_email(world.sandbox.gmail, world.user_id, world.email, "fred@contact.example")
    older.history_id = seq.history_id
    world.event(older.started())
    assert world.mailbox()["history_id"] == cursor


def test_a_reply_that_came_before_a_late_started_event_is_found_by_one_thread_check(world):
    seq = start(world)
    late = send_first_email(world.sandbox.gmail, world.user_id, world.email, "gina@contact.example")
    world.sandbox.gmail.deliver(world.email, "gina@contact.example", thread_id=late.thread_id)
    world.poll()  # the cursor passes the reply before the watcher knows the thread
    world.event(late.started())
    world.event(late.sent())
    since = time.time()
    events = world.poll()
    assert [(e["type"], e["payload"]["thread_id"]) for e in events] == [("reply.detected", late.thread_id)]
    threads_gets = [e for e in world.gmail_requests(since) if e["method"] == "gmail.threads.get"]
    assert [(e["id"], e["format"], e["metadataHeaders"]) for e in threads_gets] == [
        (late.thread_id, "metadata", ["From"])]
    assert seq.thread_id  # the first sequence stays watched
    assert world.admin_rows("SELECT count(*) FROM watcher.watches WHERE user_id = %s", world.user_id) == [(1,)]


def test_an_expired_history_cursor_rechecks_each_thread_once_and_takes_a_fresh_cursor(world):
    one = start(world, "hana@contact.example")
    two = start(world, "ivan@contact.example")
    world.poll()
    reply = world.sandbox.gmail.deliver(world.email, "hana@contact.example", thread_id=one.thread_id)
    world.sandbox.gmail.expire_history(world.email)
    since = time.time()
    events = world.poll()
    assert [(e["type"], e["payload"]["message_id"]) for e in events] == [("reply.detected", reply["id"])]
    calls = world.gmail_requests(since)
    assert [e["method"] for e in calls][:2] == ["gmail.history.list", "gmail.getProfile"]
    rechecked = sorted(e["id"] for e in calls if e["method"] == "gmail.threads.get")
    assert rechecked == sorted([one.thread_id, two.thread_id])
    assert all(e["format"] == "metadata" and e["metadataHeaders"] == ["From"]
               for e in calls if e["method"] == "gmail.threads.get")
    assert "gmail.messages.get" not in [e["method"] for e in calls]
    assert world.mailbox()["history_id"] == int(world.sandbox.gmail.mailbox(world.email)["historyId"])
    # Carries on from the fresh cursor: the next poll is idle again, and nothing is processed twice.
    since = time.time()
    assert world.poll() == []
    assert [e["method"] for e in world.gmail_requests(since)] == ["gmail.history.list"]
    assert len(world.outbox("reply.detected")) == 1


def test_the_same_reply_seen_twice_publishes_one_event(world):
    from coffeeping_reply_watcher import services

    seq = start(world)
    world.poll()
    cursor = world.mailbox()["history_id"]
    reply = world.sandbox.gmail.deliver(world.email, "jo@contact.example", thread_id=seq.thread_id)
    decision = services.Decision(reply["id"], seq.thread_id, "reply")
    first, _ = services.commit_poll(world.engine, world.user_id, [decision], cursor + 5, set(), 0.0)
    # The contact's watch went with the detection; watch the thread again, then let a second process
    # that read the same history (or a replay after a crash) decide the same message again.
    world.event(seq.started())
    second, _ = services.commit_poll(world.engine, world.user_id, [decision], cursor + 5, set(), 0.0)
    assert len(first) == 1 and second == []
    # Rewinding the cursor (history replayed) finds the message decided already.
    world.admin("UPDATE watcher.mailboxes SET history_id = %s WHERE user_id = %s", cursor, world.user_id)
    assert world.poll() == []
    assert len(world.outbox("reply.detected")) == 1


def test_gmail_rate_limiting_backs_off_the_user_and_keeps_the_cursor(world):
    start(world)
    world.poll()
    cursor = world.mailbox()["history_id"]
    world.sandbox.control.arm("gmail.history.list", 429, count=1)
    world.sandbox.gmail.deliver(world.email, "kim@contact.example")  # moves the mailbox's history on
    result = world.poller(interval_s=30.0).poll_user(world.user_id)
    assert result.outcome == "retry"
    box = world.mailbox()
    assert box["failures"] == 1 and box["deferred"] and box["history_id"] == cursor
    world.sandbox.control.arm("gmail.history.list", 503, count=1)
    world.poll()
    assert world.mailbox()["failures"] == 2
    world.poll()
    box = world.mailbox()
    assert box["failures"] == 0 and box["history_id"] > cursor


def test_a_user_whose_grant_needs_reconnecting_is_skipped_and_a_disconnect_pauses_polling(world):
    seq = start(world)
    world.vault.disconnected.add(world.user_id)
    world.tokens.forget(world.user_id)
    since = time.time()
    assert world.poller().poll_user(world.user_id).outcome == "retry"
    assert world.gmail_requests(since) == []
    world.event(ev.GmailDisconnected(reason="needs_reconnect"))
    from coffeeping_reply_watcher import services

    world.admin("UPDATE watcher.mailboxes SET due_at = now() WHERE user_id = %s", world.user_id)
    assert world.user_id not in services.claim_due(world.engine, 10_000, 60)
    world.vault.connect(world.user_id, world.email)
    world.event(ev.GmailConnected(email=world.email))
    world.sandbox.gmail.deliver(world.email, "lee@contact.example", thread_id=seq.thread_id)
    assert [e["type"] for e in world.poll()] == ["reply.detected"]
