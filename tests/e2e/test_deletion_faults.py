"""Deletion, revocation and stopping when Gmail, Google, the broker or a process fails.

The whole system runs as a user runs it (the shared ``stack``, whose mailer gives up on Gmail drafts
after ``MAILER_DRAFT_CLEANUP_S`` = 5 s). Faults come through the sandbox's control API, process
signals and ``rabbitmqctl``. After every deletion the same end state is proven: nothing was sent or
drafted after the fence (the 202), no row and no queued message names the user, their Google account
or their contacts, the grant is revoked at Google, and every draft we created is gone unless the
deletion status reports it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
import subprocess
import time
import uuid
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from google.protobuf.message import Message
from kombu import Connection

from coffeeping.common.messaging import make_envelope, requeue_dead_letters
from coffeeping.events.v1 import events_pb2 as ev
from tests.e2e.journey import (
    CONFIRM,
    add_contact,
    assert_nothing_left,
    connect_gmail,
    deletion,
    drafts_in,
    new_user,
    publish_as,
    refresh_answer,
    refresh_token_of,
    seed,
    wait_completed,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)

WRITES = ("gmail.messages.send", "gmail.drafts.send", "gmail.drafts.create", "gmail.drafts.update")
BACKENDS = ("accounts", "token-vault", "mailer", "reply-watcher")


# -- faults and observations ------------------------------------------------------------------------


@contextmanager
def fault(stack, method: str, status: int | str, count: int = 10_000):
    requests.post(f"{stack.google}/_sandbox/faults", json={"method": method, "status": status, "count": count},
                  timeout=10).raise_for_status()
    try:
        yield
    finally:
        requests.delete(f"{stack.google}/_sandbox/faults", params={"method": method}, timeout=10)


@contextmanager
def latency(stack, method: str, ms: int):
    requests.post(f"{stack.google}/_sandbox/latency", json={"ms": ms, "method": method}, timeout=10)
    try:
        yield
    finally:
        requests.post(f"{stack.google}/_sandbox/latency", json={"ms": 0, "method": method}, timeout=10)


def gmail_calls(stack, email: str, methods: tuple[str, ...], since: float = 0.0) -> list[dict]:
    log = requests.get(f"{stack.google}/_sandbox/requests", params={"prefix": "gmail."}, timeout=10).json()
    return [e for e in log["requests"]
            if e["method"] in methods and e.get("user") == email.lower() and e["t"] >= since]


def restart(stack, name: str, sig: int = signal.SIGKILL) -> None:
    stack.stack.restart_service(name, sig=sig)


def step_of(status: dict, service: str) -> dict:
    return next(s for s in status["steps"] if s["service"] == service)


def drafts_reported(status: dict) -> int:
    note = step_of(status, "mailer").get("note", "")
    match = re.match(r"(\d+) Gmail drafts? could not be removed", note)
    return int(match.group(1)) if match else 0


def queued_messages(stack, needle: str) -> list[str]:
    """Every dead-letter queue read through (and put back), and the backends' queues once drained:
    the queues holding a message that mentions ``needle``."""
    prefix = stack.config.messaging_prefix
    found = []
    with Connection(stack.config.broker_url("operator")) as conn:
        channel = conn.channel()
        for service in BACKENDS:
            queue = f"{prefix}.{service}"
            assert wait_until(lambda q=queue: channel.queue_declare(q, passive=True)[1] == 0, timeout=30), \
                f"{queue} never drained"
            dead = f"{prefix}.{service}.dead"
            bodies = []
            while (message := channel.basic_get(dead, no_ack=False)) is not None:
                bodies.append(bytes(message.body))
            channel.basic_recover(requeue=True)
            if any(needle.encode() in body for body in bodies):
                found.append(dead)
    return found


def log_lines_naming(stack, needles: list[str], since: float) -> list[str]:
    """The services' log lines written since ``since`` that mention a needle."""
    found = []
    for path in sorted(stack.config.log_dir.glob("*.log")):
        if path.stem == "sandbox":
            continue
        for line in path.read_text(errors="replace").splitlines():
            try:
                stamp = dt.datetime.fromisoformat(json.loads(line)["ts"].replace("Z", "+00:00")).timestamp()
            except (ValueError, KeyError, TypeError):
                continue
            if stamp >= since and any(needle.lower() in line.lower() for needle in needles):
                found.append(f"{path.name}: {line[:200]}")
    return found


def assert_deleted(stack, http, user: str, data: dict, refresh_token: str, fence: float) -> dict:
    """The promised end state of a deletion accepted at ``fence``; returns the final status."""
    final = wait_completed(http, timeout=120)
    assert gmail_calls(stack, data["email"], WRITES, since=fence) == [], "Gmail was written to after the fence"
    assert refresh_answer(stack, refresh_token).json()["error"] == "invalid_grant", "the grant is still alive"
    assert len(drafts_in(stack, data["email"])) == drafts_reported(final), "a draft we made is left unreported"
    assert_nothing_left(stack, [user, data["email"], *data["contacts"]])
    for needle in (user, data["email"], *data["contacts"]):
        assert queued_messages(stack, needle) == [], f"a queued message still mentions {needle}"
    assert log_lines_naming(stack, [user, data["email"], *data["contacts"]], since=fence) == []
    gone = http.get("/v1/me")
    assert gone.status_code == 410 and gone.json()["links"]["status"] == "/v1/account/deletion"
    return final


def delete_account(http) -> float:
    """Ask for the deletion; the moment of the 202 is the fence."""
    reply = http.delete("/v1/account", json=CONFIRM)
    assert reply.status_code == 202, reply.text
    return time.time()


def schedule_first_email(http, contact_id: str, in_s: float) -> str:
    """A sequence whose first email is due in ``in_s`` seconds."""
    created = http.post("/v1/sequences", json={"contact_id": contact_id, "subject": "Coffee?", "body": "Hi there",
                                               "follow_ups": [{"body": "Bump", "delay": "P2D"}]})
    assert created.status_code in (200, 201), created.text
    at = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=in_s)).isoformat()
    sent = http.post(f"/v1/sequences/{created.json()['id']}/send", json={"send_at": at})
    assert sent.status_code == 202, sent.text
    return str(created.json()["id"])


# -- the deletion under faults ------------------------------------------------------------------------


def test_a_gmail_storm_during_a_deletion_stops_sending_at_once_and_revokes_after_the_bounded_cleanup(stack):
    user = new_user("storm")
    http = stack.session(user)
    data = seed(stack, http, "storm")
    token = refresh_token_of(stack, data["email"])
    schedule_first_email(http, data["contact_ids"][1], in_s=2)  # would go out during the deletion
    with fault(stack, "gmail.drafts.delete", 503), fault(stack, "gmail.drafts.list", 429):
        fence = delete_account(http)
        time.sleep(3)
        assert deletion(http)["state"] == "in_progress"  # the cleanup retries for its 5 s
        assert http.get("/v1/contacts").status_code == 410
        final = assert_deleted(stack, http, user, data, token, fence)
    assert drafts_reported(final) == 2 and len(drafts_in(stack, data["email"])) == 2
    assert step_of(final, "mailer")["state"] == "done"


def test_the_revoke_endpoint_failing_past_the_queue_limits_then_recovering_still_revokes(stack):
    user = new_user("revdown")
    http = stack.session(user)
    data = seed(stack, http, "revdown")
    token = refresh_token_of(stack, data["email"])
    with fault(stack, "oauth.revoke", 503):
        fence = delete_account(http)
        assert wait_until(lambda: len(requests.get(f"{stack.google}/_sandbox/requests",
                                                   params={"prefix": "oauth.revoke"}, timeout=10).json()["requests"])
                          >= 8, timeout=60), "the vault stopped retrying the revocation"
        assert deletion(http)["state"] != "completed"
        assert refresh_answer(stack, token).status_code == 200  # never purged before Google confirms
    assert_deleted(stack, http, user, data, token, fence)


def test_the_vault_and_the_mailer_killed_mid_deletion_finish_it_after_restart(stack):
    user = new_user("kill2")
    http = stack.session(user)
    data = seed(stack, http, "kill2")
    token = refresh_token_of(stack, data["email"])
    with latency(stack, "gmail.drafts.delete", 1500), latency(stack, "oauth.revoke", 1500):
        fence = delete_account(http)
        assert wait_until(lambda: gmail_calls(stack, data["email"], ("gmail.drafts.delete",), since=fence),
                          timeout=30), "the mailer never started the draft cleanup"
        restart(stack, "mailer")
        assert wait_until(lambda: step_of(deletion(http), "token-vault")["state"] == "running", timeout=60)
        restart(stack, "token-vault")
    final = assert_deleted(stack, http, user, data, token, fence)
    assert drafts_reported(final) == 0


def test_rabbitmq_connections_dropped_during_a_deletion_delay_it_and_lose_nothing(stack):
    user = new_user("mqdrop")
    http = stack.session(user)
    data = seed(stack, http, "mqdrop")
    token = refresh_token_of(stack, data["email"])
    fence = delete_account(http)
    for _ in range(3):
        subprocess.run(["rabbitmqctl", "close_all_connections", "fault test"], check=True, capture_output=True,
                       timeout=60)
        time.sleep(0.7)
    assert_deleted(stack, http, user, data, token, fence)


def test_late_replayed_and_dead_lettered_events_after_a_purge_bring_nothing_back(stack):
    user = new_user("late")
    http = stack.session(user)
    data = seed(stack, http, "late")
    token = refresh_token_of(stack, data["email"])
    prefix = stack.config.messaging_prefix
    thread = http.get("/v1/sequences").json()["items"][0]["thread_id"]
    fence = delete_account(http)
    wait_completed(http)

    def envelope(message: Message) -> dict:
        late = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).isoformat()
        return {**make_envelope(user, message), "occurred_at": late}

    sequence_id = str(uuid.uuid4())
    started = envelope(ev.SequenceStarted(
        sequence_id=sequence_id, contact_id=str(uuid.uuid4()), contact_email=data["contacts"][0], thread_id=thread,
        message_id="m-late", history_id=1, user_email=data["email"]))
    sent = envelope(ev.SequenceMessageSent(sequence_id=sequence_id, thread_id=thread, message_id="m-late"))
    connected = envelope(ev.GmailConnected(email=data["email"]))
    # Late, then the same event again, each from its registered producer.
    publish_as(stack, "mailer", [started, sent, started])
    publish_as(stack, "token-vault", [connected])
    # Messages that had been dead-lettered before the purge: one is replayed by the operator, the
    # other waits in the dead-letter queue for the janitor.
    publish_as(stack, "mailer", [{**started, "id": str(uuid.uuid4())}], exchange="dlx", routing_key="reply-watcher")
    publish_as(stack, "token-vault", [{**connected, "id": str(uuid.uuid4())}], exchange="dlx", routing_key="mailer")
    requeue_dead_letters(stack.config.broker_url("operator"), prefix, "reply-watcher")
    time.sleep(3)  # the consumers and the janitors (DEAD_LETTER_SWEEP_S = 1 s) have had their turn
    assert_deleted(stack, http, user, data, token, fence)


def test_a_failed_follow_up_then_the_contact_deleted_leaves_no_draft(stack):
    user = new_user("failc")
    http = stack.session(user)
    email = f"failc.{uuid.uuid4().hex[:8]}@gmail.com"
    connect_gmail(stack, http, email)
    contact = add_contact(http, f"failc.{uuid.uuid4().hex[:6]}@example.com")
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)).isoformat()
    created = http.post("/v1/sequences", json={"contact_id": contact, "subject": "Coffee?", "body": "Hi",
                                               "follow_ups": [{"body": "Bump", "send_at": soon},
                                                              {"body": "Last", "delay": "P9D"}]})
    assert created.status_code in (200, 201), created.text
    sequence = created.json()["id"]
    with fault(stack, "gmail.drafts.send", 400):
        assert http.post(f"/v1/sequences/{sequence}/send").status_code == 202
        assert wait_until(lambda: http.get(f"/v1/sequences/{sequence}").json()["status"] == "stopped", timeout=30)
    steps = http.get(f"/v1/sequences/{sequence}").json()["steps"]
    assert [s["status"] for s in steps][:2] == ["sent", "failed"], steps
    assert http.delete(f"/v1/contacts/{contact}").status_code == 204
    assert wait_until(lambda: drafts_in(stack, email) == [], timeout=30), drafts_in(stack, email)


def test_kill_9_during_draft_creation_leaves_no_draft_we_do_not_know_about(stack):
    user = new_user("orphan")
    http = stack.session(user)
    email = f"orphan.{uuid.uuid4().hex[:8]}@gmail.com"
    connect_gmail(stack, http, email)
    contact = add_contact(http, f"orphan.{uuid.uuid4().hex[:6]}@example.com")
    token = refresh_token_of(stack, email)
    with latency(stack, "gmail.drafts.create", 1500):
        created = http.post("/v1/sequences", json={"contact_id": contact, "subject": "Coffee?", "body": "Hi",
                                                   "follow_ups": [{"body": "Bump", "delay": "P2D"}]})
        assert http.post(f"/v1/sequences/{created.json()['id']}/send").status_code == 202
        assert wait_until(lambda: gmail_calls(stack, email, ("gmail.drafts.create",)), timeout=30)
        # The draft request is inside Gmail: the mailer dies before it can record the draft's id.
        restart(stack, "mailer")
    assert wait_until(lambda: len(drafts_in(stack, email)) == 1, timeout=10), "the draft was never created"
    fence = delete_account(http)
    final = assert_deleted(stack, http, user, {"email": email, "contacts": []}, token, fence)
    assert drafts_reported(final) == 0 and drafts_in(stack, email) == []


def test_a_reply_landing_during_the_pre_send_check_stops_the_follow_up(stack):
    user = new_user("race")
    http = stack.session(user)
    email = f"race.{uuid.uuid4().hex[:8]}@gmail.com"
    connect_gmail(stack, http, email)
    contact_email = f"race.{uuid.uuid4().hex[:6]}@example.com"
    contact = add_contact(http, contact_email)
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=4)).isoformat()
    created = http.post("/v1/sequences", json={"contact_id": contact, "subject": "Coffee?", "body": "Hi",
                                               "follow_ups": [{"body": "Bump", "send_at": soon}]})
    sequence = created.json()["id"]
    assert http.post(f"/v1/sequences/{sequence}/send").status_code == 202
    assert wait_until(lambda: http.get(f"/v1/sequences/{sequence}").json()["thread_id"], timeout=30)
    thread = http.get(f"/v1/sequences/{sequence}").json()["thread_id"]
    before = time.time()
    # The reply watcher is slowed down, so that only the mailer's own check can stop this follow-up.
    with latency(stack, "gmail.history.list", 8000), latency(stack, "gmail.threads.get", 1500):
        assert wait_until(lambda: gmail_calls(stack, email, ("gmail.threads.get",), since=before), timeout=30)
        # The check's read is on its way to Gmail: the reply lands while it is in flight.
        requests.post(f"{stack.google}/_sandbox/gmail/deliver", json={
            "to": email, "from": f"Contact <{contact_email}>", "thread_id": thread, "body": "Sure!"},
            timeout=10).raise_for_status()
        assert wait_until(lambda: http.get(f"/v1/sequences/{sequence}").json()["status"] == "stopped", timeout=30)
    shown: dict[str, Any] = http.get(f"/v1/sequences/{sequence}").json()
    assert shown["stop_reason"] == "replied"
    assert gmail_calls(stack, email, ("gmail.drafts.send",)) == []
    assert wait_until(lambda: drafts_in(stack, email) == [], timeout=30)


# -- stopping when the thread or the account goes ------------------------------------------------------


def started_sequence(stack, http, tag: str, follow_up_in_s: float) -> tuple[str, str, str]:
    """A connected user with a sequence whose first email is sent; (email, sequence id, thread id)."""
    email = f"{tag}.{uuid.uuid4().hex[:8]}@gmail.com"
    connect_gmail(stack, http, email)
    contact = add_contact(http, f"{tag}.{uuid.uuid4().hex[:6]}@example.com")
    at = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=follow_up_in_s)).isoformat()
    created = http.post("/v1/sequences", json={"contact_id": contact, "subject": "Coffee?", "body": "Hi",
                                               "follow_ups": [{"body": "Bump", "send_at": at}]})
    sequence = created.json()["id"]
    assert http.post(f"/v1/sequences/{sequence}/send").status_code == 202
    assert wait_until(lambda: http.get(f"/v1/sequences/{sequence}").json()["thread_id"], timeout=30)
    return email, sequence, http.get(f"/v1/sequences/{sequence}").json()["thread_id"]


def test_a_thread_deleted_in_gmail_stops_its_sequence_instead_of_retrying_forever(stack):
    http = stack.session(new_user("gone"))
    email, sequence, thread = started_sequence(stack, http, "gone", follow_up_in_s=3)
    requests.post(f"{stack.google}/_sandbox/gmail/threads/delete", json={"user": email, "thread_id": thread},
                  timeout=10).raise_for_status()
    assert wait_until(lambda: http.get(f"/v1/sequences/{sequence}").json()["status"] == "stopped", timeout=30)
    assert http.get(f"/v1/sequences/{sequence}").json()["stop_reason"] == "thread_deleted"
    assert gmail_calls(stack, email, ("gmail.drafts.send",)) == []


def test_connecting_another_google_account_stops_the_old_accounts_sequences(stack):
    http = stack.session(new_user("switch"))
    _, sequence, _ = started_sequence(stack, http, "switch", follow_up_in_s=3600)
    assert http.delete("/v1/gmail").status_code == 204
    connect_gmail(stack, http, f"switch.other.{uuid.uuid4().hex[:8]}@gmail.com")
    assert wait_until(lambda: http.get(f"/v1/sequences/{sequence}").json()["status"] == "stopped", timeout=30)
    assert http.get(f"/v1/sequences/{sequence}").json()["stop_reason"] == "gmail_account_changed"


def test_a_deletion_while_the_mailer_is_down_answers_503_until_the_fence_is_confirmed(stack):
    user = new_user("nofence")
    http = stack.session(user)
    assert http.get("/v1/me").status_code == 200
    stack.stack.stop_service("mailer")
    try:
        refused = http.delete("/v1/account", json=CONFIRM)
        assert refused.status_code == 503 and refused.headers["Content-Type"] == "application/problem+json"
        assert "Traceback" not in refused.text
        assert deletion(http)["state"] == "in_progress"  # recorded: its event fences the mailer too
    finally:
        stack.stack.start_and_wait("mailer")
    again = http.delete("/v1/account", json=CONFIRM)
    assert again.status_code == 202, again.text
    assert wait_completed(http)["state"] == "completed"
