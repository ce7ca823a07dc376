"""Reply detection through the public API against the sandbox: a contact's reply, a bounce and the
user writing in the thread from Gmail each stop the sequence; our own follow-ups never do."""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
import requests
from stack import PUSH_SERVICE_ACCOUNT


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def connect_gmail(stack, session: requests.Session, email: str) -> None:
    """The browser's part of the OAuth flow, against the sandbox's Google."""
    requests.post(f"{stack.google}/_sandbox/consent", json={"email": email}, timeout=10).raise_for_status()
    started = session.post("/v1/gmail/connect")
    assert started.status_code == 200, started.text
    cookie = started.headers["Set-Cookie"].split(";", 1)[0]  # Secure cookie: sent by hand over http
    consent = requests.get(started.json()["authorization_url"], allow_redirects=False, timeout=10)
    assert consent.status_code == 302, consent.text
    back = session.get(consent.headers["Location"], headers={"Cookie": cookie}, allow_redirects=False)
    assert back.status_code in (302, 303) and "gmail=connected" in back.headers.get("Location", ""), back.headers


def start_sequence(session: requests.Session, contact_email: str, follow_ups: list[dict]) -> tuple[str, str]:
    contact = session.post("/v1/contacts", json={"email": contact_email, "first_name": "Dana"})
    assert contact.status_code == 201, contact.text
    created = session.post("/v1/sequences", json={"contact_id": contact.json()["id"], "subject": "Coffee next week?",
                                                  "body": "Would you have 20 minutes?", "follow_ups": follow_ups})
    assert created.status_code == 201, created.text
    sequence_id = created.json()["id"]
    sent = session.post(f"/v1/sequences/{sequence_id}/send")
    assert sent.status_code == 202, sent.text
    return contact.json()["id"], sequence_id


def active_thread(session: requests.Session, sequence_id: str) -> str:
    def started():
        body = session.get(f"/v1/sequences/{sequence_id}").json()
        return body["thread_id"] if body["status"] == "active" and body.get("thread_id") else None

    return wait_for(started, what="the first email to go out")


def stopped(session: requests.Session, sequence_id: str, timeout: float = 30.0) -> dict:
    return wait_for(lambda: (lambda b: b if b["status"] == "stopped" else None)(
        session.get(f"/v1/sequences/{sequence_id}").json()), timeout=timeout, what="the sequence to stop")


def mailbox(stack, email: str) -> dict:
    return requests.get(f"{stack.google}/_sandbox/gmail/mailbox", params={"user": email}, timeout=10).json()


def deliver(stack, **fields) -> dict:
    reply = requests.post(f"{stack.google}/_sandbox/gmail/deliver", json=fields, timeout=10)
    reply.raise_for_status()
    return reply.json()


def test_a_contact_reply_stops_the_sequence_removes_its_drafts_and_the_next_follow_up_never_goes_out(stack):
    user, email, contact = unique("user_reply"), f"{unique('owner')}@example.com", f"{unique('dana')}@contact.example"
    session = stack.session(user)
    connect_gmail(stack, session, email)
    _, sequence_id = start_sequence(session, contact, [{"body": "Bumping this", "delay": "PT8S"},
                                                       {"body": "Last try", "delay": "PT16S"}])
    thread_id = active_thread(session, sequence_id)
    wait_for(lambda: len(mailbox(stack, email)["drafts"]) == 2, what="the follow-ups mirrored as drafts")

    deliver(stack, to=email, **{"from": f"Dana <{contact}>"}, thread_id=thread_id, body="Sure, Tuesday works")
    body = stopped(session, sequence_id, timeout=15)  # poll interval 1 s in the test stack
    assert body["stop_reason"] == "replied" and body["stopped_at"]
    wait_for(lambda: mailbox(stack, email)["drafts"] == [], timeout=15, what="the pending drafts to go")
    time.sleep(10)  # past the first follow-up's due time
    thread = next(t for t in mailbox(stack, email)["threads"] if t["id"] == thread_id)
    sent = [m for m in thread["messages"] if "SENT" in m["labelIds"]]
    assert len(sent) == 1


def test_our_own_follow_ups_never_count_as_a_reply(stack):
    user, email, contact = unique("user_own"), f"{unique('owner')}@example.com", f"{unique('eli')}@contact.example"
    session = stack.session(user)
    connect_gmail(stack, session, email)
    _, sequence_id = start_sequence(session, contact, [{"body": "Bumping this", "delay": "PT2S"}])
    active_thread(session, sequence_id)
    body = wait_for(lambda: (lambda b: b if b["status"] in ("completed", "stopped") else None)(
        session.get(f"/v1/sequences/{sequence_id}").json()), what="the follow-up to go out")
    time.sleep(3)  # several watcher polls after the follow-up
    body = session.get(f"/v1/sequences/{sequence_id}").json()
    assert body["status"] == "completed" and body["stop_reason"] is None


def test_a_bounce_shows_bounced(stack):
    user, email, contact = unique("user_bounce"), f"{unique('owner')}@example.com", f"{unique('nobody')}@contact.example"
    session = stack.session(user)
    connect_gmail(stack, session, email)
    _, sequence_id = start_sequence(session, contact, [{"body": "Bumping this", "delay": "PT60S"}])
    thread_id = active_thread(session, sequence_id)
    deliver(stack, to=email, **{"from": "Mail Delivery Subsystem <mailer-daemon@googlemail.com>"},
            thread_id=thread_id, kind="bounce")
    assert stopped(session, sequence_id)["stop_reason"] == "bounced"


def test_a_message_the_user_writes_in_the_thread_from_gmail_stops_it_as_user_took_over(stack):
    user, email, contact = unique("user_take"), f"{unique('owner')}@example.com", f"{unique('fay')}@contact.example"
    session = stack.session(user)
    connect_gmail(stack, session, email)
    _, sequence_id = start_sequence(session, contact, [{"body": "Bumping this", "delay": "PT120S"}])
    thread_id = active_thread(session, sequence_id)
    requests.post(f"{stack.google}/_sandbox/gmail/user-send", json={"user": email, "thread_id": thread_id,
                                                                    "body": "I'll take it from here"},
                  timeout=10).raise_for_status()
    # The watcher waits REPLY_WATCHER_TAKEOVER_GRACE_S (15 s by default) for the mailer's own event first.
    assert stopped(session, sequence_id, timeout=60)["stop_reason"] == "user_took_over"


def _oidc(stack, **claims) -> str:
    """A push token from the sandbox's Pub/Sub, as Google signs it (``claims`` change it)."""
    wanted = {"audience": stack.config.push_endpoint, "email": PUSH_SERVICE_ACCOUNT, **claims}
    reply = requests.post(f"{stack.google}/_sandbox/pubsub/oidc-token", json=wanted, timeout=10)
    reply.raise_for_status()
    return reply.json()["token"]


def _push_body(email: str) -> dict:
    data = base64.b64encode(json.dumps({"emailAddress": email, "historyId": 12345}).encode()).decode()
    return {"message": {"data": data, "messageId": "1"}, "subscription": "projects/p/subscriptions/gmail"}


def _push(stack, token: str | None, body: dict) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"{stack.url}/v1/webhooks/gmail", headers=headers, json=body, timeout=10)


def test_a_gmail_push_with_googles_oidc_token_is_accepted_without_a_session(stack):
    reply = _push(stack, _oidc(stack), _push_body("someone@example.com"))
    assert reply.status_code == 204, reply.text


@pytest.mark.parametrize("claims, status", [
    ({"audience": "https://elsewhere.example/push"}, 403),
    ({"email": "attacker@evil.iam.gserviceaccount.com"}, 403),
    ({"email_verified": False}, 403),
    ({"issuer": "https://evil.example"}, 403),
    ({"lifetime_s": -600, "iat": 1_000_000_000}, 401),  # expired long ago
    ({"forged": True}, 401),  # signed by a key that is not Google's
])
def test_a_forged_push_is_refused(stack, claims, status):
    reply = _push(stack, _oidc(stack, **claims), _push_body("a@example.com"))
    assert reply.status_code == status, reply.text
    assert reply.headers["Content-Type"] == "application/problem+json"


def test_a_push_without_a_token_or_with_a_token_in_the_query_string_is_refused(stack):
    assert _push(stack, None, _push_body("a@example.com")).status_code == 401
    reply = requests.post(f"{stack.url}/v1/webhooks/gmail", params={"token": _oidc(stack)},
                          json=_push_body("a@example.com"), timeout=10)
    assert reply.status_code == 401


def test_a_malformed_push_body_is_400(stack):
    token = _oidc(stack)
    for body in ({}, {"message": {"data": "!!!"}}, {"message": {"data": base64.b64encode(b"[1]").decode()}}):
        reply = _push(stack, token, body)
        assert reply.status_code == 400, reply.text
        assert "Traceback" not in reply.text
