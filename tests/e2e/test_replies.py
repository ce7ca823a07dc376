"""Reply detection through the public API against the sandbox: a contact's reply, a bounce and the
user writing in the thread from Gmail each stop the sequence; our own follow-ups never do. Gmail push:
pushes authenticated by Google's OIDC token make the watcher read at once (forged ones never cause a Gmail
call), a reply is noticed through push alone, lost, duplicated and reordered pushes change nothing, and
the watch is renewed, and stopped on disconnect and on deletion."""

from __future__ import annotations

import base64
import json
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
import pytest
import requests
from stack import PUSH_SERVICE_ACCOUNT, PUSH_TOPIC

from tests.e2e.journey import CONFIRM, wait_completed


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


def _push_body(email: str, history_id: int = 12345) -> dict:
    data = base64.b64encode(json.dumps({"emailAddress": email, "historyId": history_id}).encode()).decode()
    return {"message": {"data": data, "messageId": "1"}, "subscription": "projects/p/subscriptions/gmail"}


def _push(stack, token: str | None, body: dict) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"{stack.url}/v1/webhooks/gmail", headers=headers, json=body, timeout=10)


def test_a_gmail_push_with_googles_oidc_token_is_accepted_without_a_session(stack, watched):
    reply = _push(stack, _oidc(stack), _push_body("someone@example.com"))
    assert reply.status_code == 204, reply.text
    # Naming a watched mailbox and a change past its cursor, it has that mailbox's history read at once.
    since = time.time()
    reply = _push(stack, _oidc(stack), _push_body(watched.email, history_id=10**12))
    assert reply.status_code == 204, reply.text
    wait_for(lambda: [c for c in gmail_calls(stack, watched.email, since) if c["method"] == "gmail.history.list"],
             timeout=10, what="the pushed mailbox to be read")
    settle(stack, watched.email)


@pytest.mark.parametrize("claims, status", [
    ({"audience": "https://elsewhere.example/push"}, 403),
    ({"email": "attacker@evil.iam.gserviceaccount.com"}, 403),
    ({"email_verified": False}, 403),
    ({"issuer": "https://evil.example"}, 403),
    ({"lifetime_s": -600, "iat": 1_000_000_000}, 401),  # expired long ago
    ({"forged": True}, 401),  # signed by a key that is not Google's
])
def test_a_forged_push_is_refused_and_no_gmail_call_follows(stack, watched, claims, status):
    since = time.time()
    reply = _push(stack, _oidc(stack, **claims), _push_body(watched.email, history_id=10**12))
    assert reply.status_code == status, reply.text
    assert reply.headers["Content-Type"] == "application/problem+json"
    time.sleep(1.5)  # a genuine push has the mailbox read well within this (above)
    assert gmail_calls(stack, watched.email, since) == []


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


# -- Gmail push: the watcher's side -------------------------------------------------------------------

SUBSCRIPTION = PUSH_TOPIC.replace("/topics/", "/subscriptions/")  # the sandbox's default for the topic
HOUR = {"REPLY_WATCHER_POLL_INTERVAL_S": "3600", "REPLY_WATCHER_FALLBACK_INTERVAL_S": "3600"}


class WatcherSettings:
    """Restarts the stack's reply watcher with other settings when they change; the module ends with
    the stack's own settings back."""

    def __init__(self, stack) -> None:
        self.stack = stack
        self.base = dict(stack.config.extra_env)
        self.current: dict[str, str] = {}

    def apply(self, env: dict[str, str]) -> None:
        if env == self.current:
            return
        self.stack.config.extra_env.clear()
        self.stack.config.extra_env.update({**self.base, **env})
        self.stack.stack.restart_service("reply-watcher")
        self.current = dict(env)


@pytest.fixture(scope="module")
def watcher(stack):
    settings = WatcherSettings(stack)
    yield settings
    settings.apply({})


@dataclass
class Watched:
    session: requests.Session
    user: str
    email: str
    contact: str
    sequence_id: str
    thread_id: str


def gmail_calls(stack, email: str, since: float = 0.0) -> list[dict]:
    """The sandbox's log of Gmail calls made as ``email`` since ``since``."""
    log = requests.get(f"{stack.google}/_sandbox/requests", params={"prefix": "gmail."}, timeout=10).json()
    return [e for e in log["requests"] if e.get("user") == email.lower() and e["t"] >= since]


def watch_of(stack, email: str) -> dict | None:
    reply = requests.get(f"{stack.google}/_sandbox/gmail/watch", params={"user": email}, timeout=10)
    reply.raise_for_status()
    return reply.json()["watch"]


def pushes_for(stack, email: str, since: float) -> list[dict]:
    log = requests.get(f"{stack.google}/_sandbox/pubsub/deliveries", params={"subscription": SUBSCRIPTION},
                       timeout=10).json()["deliveries"]
    return [d for d in log if (d.get("data") or {}).get("emailAddress") == email.lower()
            and d["published_at"] >= since]


@contextmanager
def push_faults(stack, **faults):
    requests.post(f"{stack.google}/_sandbox/pubsub/faults", json={"subscription": SUBSCRIPTION, **faults},
                  timeout=10).raise_for_status()
    try:
        yield
    finally:
        requests.delete(f"{stack.google}/_sandbox/pubsub/faults", params={"subscription": SUBSCRIPTION}, timeout=10)


def watcher_rows(stack, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(stack.database.admin_url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def settle(stack, email: str, quiet_s: float = 2.0, timeout: float = 30.0) -> None:
    """Wait until no Gmail call has been made as ``email`` for ``quiet_s`` (the first reads are done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        calls = gmail_calls(stack, email)
        if not calls or time.time() - max(c["t"] for c in calls) >= quiet_s:
            return
        time.sleep(0.2)
    raise AssertionError(f"Gmail calls for {email} never settled")


def new_watched(stack, tag: str, quiet: bool = True) -> Watched:
    """A connected user with a live sequence (its follow-up days away) whose mailbox is watched."""
    user, email = unique(f"user_{tag}"), f"{unique(tag)}@example.com"
    contact = f"{unique('cleo')}@contact.example"
    session = stack.session(user)
    connect_gmail(stack, session, email)
    _, sequence_id = start_sequence(session, contact, [{"body": "Bumping this", "delay": "P3D"}])
    thread_id = active_thread(session, sequence_id)
    wait_for(lambda: watch_of(stack, email), what="the mailbox to be watched")
    if quiet:
        settle(stack, email)
    return Watched(session, user, email, contact, sequence_id, thread_id)


@pytest.fixture(scope="module")
def watched(stack, watcher) -> Watched:
    """A watched mailbox whose watcher polls once an hour: any Gmail call as it comes from a push."""
    watcher.apply(HOUR)
    return new_watched(stack, "pushed")


def test_a_reply_stops_the_sequence_through_push_alone_with_polls_an_hour_apart(stack, watcher):
    watcher.apply(HOUR)
    w = new_watched(stack, "pushreply")
    since = time.time()
    deliver(stack, to=w.email, **{"from": f"Cleo <{w.contact}>"}, thread_id=w.thread_id, body="Happy to meet")
    body = stopped(w.session, w.sequence_id, timeout=15)
    assert body["stop_reason"] == "replied"
    assert [p for p in pushes_for(stack, w.email, since) if p["outcome"] == "ack"], "no push was delivered"


def test_duplicated_and_reordered_pushes_detect_the_reply_once_and_stop_the_sequence_once(stack, watcher):
    watcher.apply(HOUR)
    w = new_watched(stack, "pushdup")
    since = time.time()
    with push_faults(stack, duplicate="every", reorder=3):
        deliver(stack, to=w.email, **{"from": f"Cleo <{w.contact}>"}, thread_id=w.thread_id, body="Sure")
        deliver(stack, to=w.email, **{"from": "news@else.example"}, subject="Weekly digest")
        deliver(stack, to=w.email, **{"from": "friend@else.example"}, subject="Lunch?")
        # Three notifications, each pushed twice, the newest first.
        wait_for(lambda: len([p for p in pushes_for(stack, w.email, since) if p["outcome"] == "ack"]) >= 6,
                 timeout=20, what="every push to be delivered")
        assert stopped(w.session, w.sequence_id)["stop_reason"] == "replied"
    delivered = [p for p in pushes_for(stack, w.email, since) if p["outcome"] == "ack"]
    assert any(p["duplicate"] for p in delivered)
    assert [p["data"]["historyId"] for p in delivered] != sorted(p["data"]["historyId"] for p in delivered)
    time.sleep(1)
    reads = [c for c in gmail_calls(stack, w.email, since) if c["method"] == "gmail.history.list"]
    assert 1 <= len(reads) <= 2, reads  # six pushes, coalesced
    records = w.session.get("/v1/export").json()["sections"]["replies"]["records"]
    assert [r["kind"] for r in records] == ["reply"]
    body = w.session.get(f"/v1/sequences/{w.sequence_id}").json()
    assert body["status"] == "stopped" and body["stop_reason"] == "replied"


def test_a_dropped_push_is_caught_by_the_fallback_poll(stack, watcher):
    watcher.apply({"REPLY_WATCHER_POLL_INTERVAL_S": "3600", "REPLY_WATCHER_FALLBACK_INTERVAL_S": "3"})
    w = new_watched(stack, "pushlost", quiet=False)
    since = time.time()
    with push_faults(stack, drop="every"):
        deliver(stack, to=w.email, **{"from": f"Cleo <{w.contact}>"}, thread_id=w.thread_id, body="Yes!")
        assert stopped(w.session, w.sequence_id, timeout=20)["stop_reason"] == "replied"
    outcomes = {p["outcome"] for p in pushes_for(stack, w.email, since)}
    assert "dropped" in outcomes and "ack" not in outcomes


def test_the_watch_is_renewed_before_it_expires(stack, watcher):
    # Watches of 6 s here: the watcher looks for due work every poll interval / 4 (0.25 s), and its
    # watched mailboxes are polled once an hour.
    watcher.apply({"REPLY_WATCHER_POLL_INTERVAL_S": "1", "REPLY_WATCHER_FALLBACK_INTERVAL_S": "3600"})
    lifetime = f"{stack.google}/_sandbox/gmail/watch/lifetime"
    requests.post(lifetime, json={"seconds": 6}, timeout=10).raise_for_status()
    try:
        w = new_watched(stack, "pushrenew", quiet=False)
        since = time.time()
        lapsed = []
        while time.time() - since < 10:
            lapsed.append(watch_of(stack, w.email)["expired"])
            time.sleep(0.25)
    finally:
        requests.post(lifetime, json={"seconds": None}, timeout=10).raise_for_status()
    renewals = [c for c in gmail_calls(stack, w.email, since) if c["method"] == "gmail.watch"]
    assert len(renewals) >= 2, renewals
    assert not any(lapsed), "the watch ran out before it was renewed"


def test_disconnecting_gmail_stops_the_watch_and_pushes_for_the_address_then_do_nothing(stack, watcher):
    watcher.apply(HOUR)
    w = new_watched(stack, "pushoff")
    assert w.session.delete("/v1/gmail").status_code == 204
    # The vault revoked the grant before it said so: the stop finds no grant, which counts as done (the
    # watch ended with the grant at Google; the sandbox does not model that, so its watch record stays).
    wait_for(lambda: watcher_rows(stack, "SELECT paused AND watch_expires_at IS NULL FROM watcher.mailboxes "
                                         "WHERE user_id = %s", w.user) == [(True,)], what="the mailbox to pause")
    wait_for(lambda: watcher_rows(stack, "SELECT count(*) FROM watcher.watch_stops WHERE user_id = %s",
                                  w.user) == [(0,)], what="the queued stop to be done")
    since = time.time()
    assert _push(stack, _oidc(stack), _push_body(w.email, history_id=10**12)).status_code == 204
    time.sleep(1.5)
    assert gmail_calls(stack, w.email, since) == []


def test_deleting_the_account_stops_the_watch_before_the_deletion_completes(stack, watcher):
    watcher.apply(HOUR)
    w = new_watched(stack, "pushdel")
    assert w.session.delete("/v1/account", json=CONFIRM).status_code == 202
    final = wait_completed(w.session)
    assert next(s for s in final["steps"] if s["service"] == "reply-watcher")["state"] == "done"
    assert watch_of(stack, w.email) is None
    for table in ("mailboxes", "watch_stops"):
        assert watcher_rows(stack, f"SELECT count(*) FROM watcher.{table} WHERE user_id = %s", w.user) == [(0,)]
