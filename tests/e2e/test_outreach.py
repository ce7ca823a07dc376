"""Outreach end to end through the public API against the sandbox: a contact, a sequence with two
follow-ups, the first email in the mailbox, threaded drafts, an edited draft sent as edited and a
deleted draft cancelling its step; and the API's refusals as problem documents."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import requests

COOKIE = "cp_gmail_oauth"


def _connect_gmail(stack, session, email: str) -> None:
    """Drive the connect flow as a browser would: consent URL, the sandbox's consent, the callback."""
    reply = session.post("/v1/gmail/connect")
    assert reply.status_code == 200, reply.text
    cookie = reply.cookies.get(COOKIE)
    requests.post(f"{stack.google}/_sandbox/consent", json={"email": email}, timeout=10).raise_for_status()
    google = requests.get(reply.json()["authorization_url"], allow_redirects=False, timeout=10)
    assert google.status_code == 302, google.text
    done = session.get(google.headers["Location"], cookies={COOKIE: cookie}, allow_redirects=False)
    assert done.status_code == 302 and "gmail=connected" in done.headers["Location"], done.headers.get("Location")


def _mailbox(stack, email: str) -> dict:
    reply = requests.get(f"{stack.google}/_sandbox/gmail/mailbox", params={"user": email}, timeout=10)
    reply.raise_for_status()
    return reply.json()


def _wait(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.25)


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_a_sequence_sends_threads_its_drafts_and_honours_edits_and_deletions(stack):
    tag = uuid.uuid4().hex[:8]
    session = stack.session(f"user_e2e_outreach_{tag}")
    sender = f"sender-{tag}@gmail.com"
    _connect_gmail(stack, session, sender)

    reply = session.post("/v1/contacts", json={"email": f"Contact-{tag}@Example.com", "first_name": "Ada",
                                               "company": "Analytical Engines"})
    assert reply.status_code == 201, reply.text
    contact = reply.json()
    reply = session.post("/v1/sequences", json={
        "contact_id": contact["id"], "subject": "Coffee with {{company}}?",
        "body": "Hi {{first_name}},\nwould you have 15 minutes?",
        "follow_ups": [{"body": "Just bumping this, {{first_name}}.", "delay": "PT5S"},
                       {"body": "Last try!", "delay": "PT10S"}]})
    assert reply.status_code == 201, reply.text
    seq = reply.json()
    reply = session.post(f"/v1/sequences/{seq['id']}/send")
    assert reply.status_code == 202, reply.text

    def drafted():
        body = session.get(f"/v1/sequences/{seq['id']}").json()
        return body if body["status"] == "active" and all(s["draft_id"] for s in body["steps"][1:]) else None

    body = _wait(drafted)
    assert body, session.get(f"/v1/sequences/{seq['id']}").text
    first = body["steps"][0]
    box = _mailbox(stack, sender)
    thread = next(t for t in box["threads"] if t["id"] == first["thread_id"])
    sent = [m for m in thread["messages"] if "SENT" in m["labelIds"]]
    drafts = [m for m in thread["messages"] if "DRAFT" in m["labelIds"]]
    assert len(sent) == 1 and len(drafts) == 2
    assert sent[0]["subject"] == "Coffee with Analytical Engines?"
    assert contact["email"] in sent[0]["to"]
    assert sent[0]["body"].replace("\r\n", "\n").strip() == "Hi Ada,\nwould you have 15 minutes?"
    for draft in drafts:
        assert draft["subject"] == "Re: Coffee with Analytical Engines?"
        assert draft["in_reply_to"] == sent[0]["message_id"] and draft["references"] == sent[0]["message_id"]
        assert draft["threadId"] == first["thread_id"]

    # The user edits the first follow-up and deletes the second, in Gmail.
    edit = requests.post(f"{stack.google}/_sandbox/gmail/drafts/edit", timeout=10,
                         json={"user": sender, "draft_id": body["steps"][1]["draft_id"], "body": "Edited in Gmail."})
    assert edit.status_code == 200, edit.text
    gone = requests.post(f"{stack.google}/_sandbox/gmail/drafts/delete", timeout=10,
                         json={"user": sender, "draft_id": body["steps"][2]["draft_id"]})
    assert gone.status_code == 200, gone.text

    def ended():
        current = session.get(f"/v1/sequences/{seq['id']}").json()
        return current if current["status"] in ("stopped", "completed") else None

    done = _wait(ended, timeout=40)
    assert done, session.get(f"/v1/sequences/{seq['id']}").text
    follow, deleted = done["steps"][1], done["steps"][2]
    assert follow["status"] == "sent" and follow["edited_in_gmail"] is True
    # The stored body is what went out (read from the draft with a compose-only token).
    assert follow["sent_body"].replace("\r\n", "\n").strip() == "Edited in Gmail."
    assert follow["thread_id"] == first["thread_id"]
    # On time: due five seconds after the first email, and not sent before it was due.
    assert _time(follow["due_at"]) - _time(first["sent_at"]) == dt.timedelta(seconds=5)
    assert _time(follow["sent_at"]) >= _time(follow["due_at"])
    assert deleted["status"] == "cancelled" and deleted["cancel_reason"] == "draft_deleted"
    assert done["status"] == "stopped" and done["stop_reason"] == "draft_deleted"

    thread = next(t for t in _mailbox(stack, sender)["threads"] if t["id"] == first["thread_id"])
    bodies = [m["body"].replace("\r\n", "\n").strip() for m in thread["messages"]]
    assert bodies == ["Hi Ada,\nwould you have 15 minutes?", "Edited in Gmail."]
    assert all("SENT" in m["labelIds"] for m in thread["messages"])


def test_outreach_refusals_are_problem_documents_with_field_errors(stack):
    tag = uuid.uuid4().hex[:8]
    session = stack.session(f"user_e2e_refusals_{tag}")
    reply = session.post("/v1/contacts", json={"email": "x@example.com", "name": "Eve\r\nBcc: v@example.com"})
    assert reply.status_code == 422
    assert reply.headers["Content-Type"] == "application/problem+json"
    assert {"field": "name", "message": "must not contain line breaks or control characters"} in reply.json()["errors"]

    created = session.post("/v1/contacts", json={"email": f"dup-{tag}@example.com"})
    assert created.status_code == 201
    dup = session.post("/v1/contacts", json={"email": f"DUP-{tag}@EXAMPLE.COM"})
    assert dup.status_code == 409 and dup.json()["existing_id"] == created.json()["id"]

    reply = session.post("/v1/sequences", json={"contact_id": created.json()["id"], "subject": "Hi {{company}}",
                                                "body": "b"})
    assert reply.status_code == 422 and reply.json()["errors"][0]["field"] == "subject"

    other = stack.session(f"user_e2e_other_{tag}")
    assert other.get(f"/v1/contacts/{created.json()['id']}").status_code == 404
    assert other.get("/v1/contacts/not-a-uuid").status_code == 404

    csv_reply = session.post("/v1/contacts/import", data=b"email,first_name\nok-" + tag.encode() + b"@example.com,A\n"
                             b"broken,B\n", headers={"Content-Type": "text/csv"})
    assert csv_reply.status_code == 200, csv_reply.text
    assert csv_reply.json() == {"created": 1, "duplicates": 0, "errors": [{"line": 3, "reason": csv_reply.json()[
        "errors"][0]["reason"]}]}
    page = session.get("/v1/contacts", params={"limit": 1})
    assert page.status_code == 200 and len(page.json()["items"]) == 1 and page.json()["next_cursor"]
    assert session.get("/v1/contacts", params={"limit": 0}).status_code == 422
    assert "/v1/sequences/{sequence_id}/send" in requests.get(f"{stack.url}/openapi.json", timeout=10).json()["paths"]
