"""Sending through Gmail (the sandbox): the first email, threaded follow-up drafts, the draft as the
source of truth, replies found before a follow-up, Gmail faults, and the events the mailer publishes."""

from __future__ import annotations

import datetime as dt

from coffeeping.events.v1 import events_pb2 as ev
from tests.integration.mailer.conftest import contact_email, publish_event, wait_for


def _start(api, user_id, follow_ups, **extra):
    status, contact = api(user_id, "contacts.create", {"email": contact_email(), "first_name": "Ada",
                                                       "company": "Analytical"})
    assert status == 201, contact
    status, seq = api(user_id, "sequences.create", {
        "contact_id": contact["id"], "subject": "Coffee, {{first_name}}?",
        "body": "Hi {{first_name}}, shall we talk about {{company}}?", "follow_ups": follow_ups, **extra})
    assert status == 201, seq
    status, sent = api(user_id, "sequences.send", sequence_id=seq["id"])
    assert status == 202, sent
    return contact, seq


def _seq(api, user_id, seq_id):
    status, body = api(user_id, "sequences.get", sequence_id=seq_id)
    assert status == 200
    return body


def _thread(sandbox, email, thread_id):
    box = sandbox.gmail.mailbox(email)
    return next(t for t in box["threads"] if t["id"] == thread_id)


def test_first_email_goes_out_and_follow_ups_become_drafts_in_its_thread(api, sandbox, user):
    user_id, email = user
    contact, seq = _start(api, user_id, [{"body": "One more nudge", "delay": "PT30S"},
                                         {"body": "Last one", "delay": "PT60S"}])
    body = wait_for(lambda: (b := _seq(api, user_id, seq["id"]))["status"] == "active"
                    and all(s["draft_id"] for s in b["steps"][1:]) and b)
    assert body, _seq(api, user_id, seq["id"])
    first = body["steps"][0]
    assert first["status"] == "sent" and first["gmail_message_id"] and first["thread_id"]
    assert first["sent_body"] == "Hi Ada, shall we talk about Analytical?"
    thread = _thread(sandbox, email, first["thread_id"])
    sent = [m for m in thread["messages"] if "SENT" in m["labelIds"]]
    drafts = [m for m in thread["messages"] if "DRAFT" in m["labelIds"]]
    assert len(sent) == 1 and len(drafts) == 2
    assert sent[0]["subject"] == "Coffee, Ada?"
    assert sent[0]["to"] == f"Ada <{contact['email']}>"
    assert sent[0]["body"].strip() == "Hi Ada, shall we talk about Analytical?"
    for draft in drafts:
        assert draft["subject"] == "Re: Coffee, Ada?"
        assert draft["in_reply_to"] == sent[0]["message_id"]
        assert draft["references"] == sent[0]["message_id"]
        assert draft["to"] == sent[0]["to"]
    assert {d["body"].strip() for d in drafts} == {"One more nudge", "Last one"}


def test_follow_ups_are_sent_on_time_in_the_thread_and_the_sequence_completes(api, sandbox, user):
    user_id, email = user
    _, seq = _start(api, user_id, [{"body": "Nudge", "delay": "PT2S"}, {"body": "Final", "delay": "PT3S"}])
    done = wait_for(lambda: (b := _seq(api, user_id, seq["id"]))["status"] == "completed" and b, timeout=30)
    assert done, _seq(api, user_id, seq["id"])
    steps = done["steps"]
    assert [s["status"] for s in steps] == ["sent", "sent", "sent"]
    sent_at = [dt.datetime.fromisoformat(s["sent_at"].replace("Z", "+00:00")) for s in steps]
    assert sent_at[1] - sent_at[0] >= dt.timedelta(seconds=2)
    assert sent_at[2] - sent_at[1] >= dt.timedelta(seconds=3)
    thread = _thread(sandbox, email, steps[0]["thread_id"])
    assert [m["body"].strip() for m in thread["messages"]] == ["Hi Ada, shall we talk about Analytical?", "Nudge",
                                                               "Final"]
    assert all("SENT" in m["labelIds"] for m in thread["messages"])
    assert {s["thread_id"] for s in steps} == {steps[0]["thread_id"]}


def test_an_edited_draft_goes_out_as_edited(api, sandbox, user):
    user_id, email = user
    _, seq = _start(api, user_id, [{"body": "Original words", "delay": "PT4S"}])
    body = wait_for(lambda: (b := _seq(api, user_id, seq["id"]))["steps"][1]["draft_id"] and b)
    sandbox.gmail.edit_draft(email, body["steps"][1]["draft_id"], "Words the user wrote in Gmail")
    done = wait_for(lambda: (b := _seq(api, user_id, seq["id"]))["status"] == "completed" and b, timeout=20)
    assert done
    follow = done["steps"][1]
    assert follow["status"] == "sent" and follow["edited_in_gmail"] is True
    thread = _thread(sandbox, email, follow["thread_id"])
    assert thread["messages"][-1]["body"].strip() == "Words the user wrote in Gmail"
    assert "Original words" not in [m["body"].strip() for m in thread["messages"]]


def test_a_draft_deleted_in_gmail_cancels_its_step_and_is_not_recreated(api, sandbox, user):
    user_id, email = user
    _, seq = _start(api, user_id, [{"body": "Deleted by the user", "delay": "PT3S"}])
    body = wait_for(lambda: (b := _seq(api, user_id, seq["id"]))["steps"][1]["draft_id"] and b)
    sandbox.gmail.delete_draft(email, body["steps"][1]["draft_id"])
    done = wait_for(lambda: (b := _seq(api, user_id, seq["id"]))["status"] == "stopped" and b, timeout=20)
    assert done
    assert done["stop_reason"] == "draft_deleted"
    assert done["steps"][1]["status"] == "cancelled" and done["steps"][1]["cancel_reason"] == "draft_deleted"
    thread = _thread(sandbox, email, done["steps"][0]["thread_id"])
    assert len(thread["messages"]) == 1
    assert sandbox.gmail.mailbox(email)["drafts"] == []


def test_a_reply_in_the_thread_stops_the_sequence_before_the_follow_up(api, sandbox, user):
    user_id, email = user
    contact, seq = _start(api, user_id, [{"body": "Never sent", "delay": "PT3S"}])
    body = wait_for(lambda: (b := _seq(api, user_id, seq["id"]))["steps"][1]["draft_id"] and b)
    sandbox.gmail.deliver(email, contact["email"], thread_id=body["steps"][0]["thread_id"], body="Sure, Tuesday?")
    done = wait_for(lambda: (b := _seq(api, user_id, seq["id"]))["status"] == "stopped" and b, timeout=20)
    assert done and done["stop_reason"] == "replied" and done["stopped_at"]
    assert done["steps"][1]["status"] == "cancelled"
    assert wait_for(lambda: sandbox.gmail.mailbox(email)["drafts"] == [])
    thread = _thread(sandbox, email, body["steps"][0]["thread_id"])
    assert sum("SENT" in m["labelIds"] for m in thread["messages"]) == 1
    # Only From was asked for, of the received message.
    assert sandbox.gmail.privacy_audit(email)["count"] == 0


def test_gmail_429_keeps_the_step_scheduled_and_it_goes_out_later(api, sandbox, user):
    user_id, email = user
    sandbox.control.arm("gmail.drafts.send", 429, count=1)
    _, seq = _start(api, user_id, [{"body": "After a rate limit", "delay": "PT1S"}])
    body = wait_for(lambda: (b := _seq(api, user_id, seq["id"]))["steps"][1]["last_error"] and b, timeout=20)
    assert body, _seq(api, user_id, seq["id"])
    assert body["steps"][1]["status"] == "scheduled"
    assert body["steps"][1]["last_error"] == "gmail 429"
    done = wait_for(lambda: (b := _seq(api, user_id, seq["id"]))["status"] == "completed" and b, timeout=30)
    assert done and done["steps"][1]["status"] == "sent" and done["steps"][1]["attempts"] == 1
    thread = _thread(sandbox, email, done["steps"][0]["thread_id"])
    assert len(thread["messages"]) == 2


def test_vault_needs_reconnect_pauses_the_users_sequences_as_gmail_disconnected(api, vault, user):
    user_id, _ = user
    vault[0].disconnect(user_id)
    _, seq = _start(api, user_id, [{"body": "x", "delay": "PT1S"}])
    body = wait_for(lambda: (b := _seq(api, user_id, seq["id"]))["status"] == "paused" and b, timeout=20)
    assert body and body["pause_reason"] == "gmail_disconnected"
    assert body["steps"][0]["status"] in ("scheduled", "sending")
    vault[0].connect(user_id, user[1])
    status, resumed = api(user_id, "sequences.resume", sequence_id=seq["id"])
    assert status == 200 and resumed["status"] == "scheduled"
    assert wait_for(lambda: _seq(api, user_id, seq["id"])["status"] == "completed", timeout=20)


def test_reply_event_stops_every_running_sequence_of_the_contact_and_deletes_drafts(
        api, sandbox, user, mailer_bus):
    user_id, email = user
    contact, seq = _start(api, user_id, [{"body": "pending", "delay": "P1D"}])
    status, other = api(user_id, "sequences.create", {"contact_id": contact["id"], "subject": "Another thread",
                                                      "body": "Second", "follow_ups": [{"body": "p", "delay": "P2D"}]})
    assert status == 201
    api(user_id, "sequences.send", sequence_id=other["id"])
    assert wait_for(lambda: len(sandbox.gmail.mailbox(email)["drafts"]) == 2)
    first = _seq(api, user_id, seq["id"])
    publish_event(mailer_bus, user_id, ev.ReplyDetected(
        contact_id=contact["id"], sequence_ids=[seq["id"]], thread_id=first["thread_id"], message_id="m1",
        detected_at=dt.datetime(2026, 11, 29, 10, 0, tzinfo=dt.UTC)))
    for seq_id in (seq["id"], other["id"]):
        done = wait_for(lambda s=seq_id: (b := _seq(api, user_id, s))["status"] == "stopped" and b, timeout=20)
        assert done and done["stop_reason"] == "replied"
        assert done["stopped_at"] == "2026-11-29T10:00:00Z"
        assert done["steps"][1]["status"] == "cancelled"
    assert wait_for(lambda: sandbox.gmail.mailbox(email)["drafts"] == [], timeout=20)


def test_bounce_and_takeover_events_stop_with_their_reasons(api, user, mailer_bus):
    user_id, _ = user
    outcomes = {}
    for kind, detection in (("bounce.detected", ev.BounceDetected), ("takeover.detected", ev.TakeoverDetected)):
        contact, seq = _start(api, user_id, [{"body": "p", "delay": "P1D"}])
        assert wait_for(lambda s=seq: _seq(api, user_id, s["id"])["status"] == "active")
        publish_event(mailer_bus, user_id, detection(
            contact_id=contact["id"], sequence_ids=[seq["id"]], thread_id="t", message_id="m",
            detected_at=dt.datetime(2026, 11, 29, 10, 0, tzinfo=dt.UTC)))
        done = wait_for(lambda s=seq: (b := _seq(api, user_id, s["id"]))["status"] == "stopped" and b, timeout=20)
        outcomes[kind] = done and done["stop_reason"]
    assert outcomes == {"bounce.detected": "bounced", "takeover.detected": "user_took_over"}


def test_gmail_disconnected_event_pauses_running_sequences(api, user, mailer_bus):
    user_id, _ = user
    _, seq = _start(api, user_id, [{"body": "p", "delay": "P1D"}])
    assert wait_for(lambda: _seq(api, user_id, seq["id"])["status"] == "active")
    publish_event(mailer_bus, user_id, ev.GmailDisconnected(reason="needs_reconnect"))
    body = wait_for(lambda: (b := _seq(api, user_id, seq["id"]))["status"] == "paused" and b, timeout=20)
    assert body and body["pause_reason"] == "gmail_disconnected"
