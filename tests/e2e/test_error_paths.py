"""The error paths, driven so that ``test_log_hygiene.py`` (which runs last) reads what they logged:
a database error under a request, Gmail answering 4xx and 5xx to sends, KMS failing a connection, and
a poisoned message. Each must still answer the user cleanly; none may log an address or content."""

from __future__ import annotations

import datetime as dt
import uuid

import psycopg
import pytest
import requests
from kombu import Connection

from tests.e2e.journey import add_contact, connect_gmail, new_user, publish_as, wait_until

pytestmark = pytest.mark.timeout(300)


def test_a_database_error_under_a_request_is_a_clean_503_and_is_retried(stack):
    http = stack.session(new_user("dberr"))
    assert http.get("/v1/contacts").status_code == 200
    with psycopg.connect(stack.database.admin_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'cp_mailer' "
                     "AND datname = current_database()")
    replies = [http.post("/v1/contacts", json={"email": f"db.error.{uuid.uuid4().hex[:6]}@example.com"})
               for _ in range(3)]
    assert {r.status_code for r in replies} <= {201, 503}
    assert all("Traceback" not in r.text for r in replies)
    assert replies[-1].status_code == 201


@pytest.mark.parametrize("status", [400, 503])
def test_gmail_refusing_or_failing_a_send_logs_no_address(stack, status):
    http = stack.session(new_user(f"gm{status}"))
    email = f"gm{status}.{uuid.uuid4().hex[:8]}@gmail.com"
    connect_gmail(stack, http, email)
    contact = add_contact(http, f"gm{status}.{uuid.uuid4().hex[:6]}@example.com")
    created = http.post("/v1/sequences", json={"contact_id": contact, "subject": f"Coffee {status}?",
                                               "body": "Would you have time for a coffee?"})
    requests.post(f"{stack.google}/_sandbox/faults", json={"method": "gmail.messages.send", "status": status,
                                                           "count": 2}, timeout=10).raise_for_status()
    try:
        assert http.post(f"/v1/sequences/{created.json()['id']}/send").status_code == 202
        assert wait_until(lambda: requests.get(f"{stack.google}/_sandbox/requests",
                                               params={"prefix": "gmail.messages.send"}, timeout=10).json()
                          ["requests"], timeout=30)
        assert wait_until(lambda: http.get(f"/v1/sequences/{created.json()['id']}").json()["steps"][0]
                          ["last_error"], timeout=30)
    finally:
        requests.delete(f"{stack.google}/_sandbox/faults", params={"method": "gmail.messages.send"}, timeout=10)


def test_kms_failing_a_connection_is_a_clear_refusal(stack):
    http = stack.session(new_user("kmserr"))
    requests.post(f"{stack.google}/_sandbox/faults", json={"method": "kms.Encrypt", "status": "UNAVAILABLE",
                                                           "count": 100_000}, timeout=10).raise_for_status()
    try:
        with pytest.raises(AssertionError, match="gmail="):
            connect_gmail(stack, http, f"kms.error.{uuid.uuid4().hex[:8]}@gmail.com")
    finally:
        requests.delete(f"{stack.google}/_sandbox/faults", params={"method": "kms.Encrypt"}, timeout=10)
    assert http.get("/v1/me").json()["gmail"] == {"connected": False}


def test_a_poisoned_message_is_dead_lettered_without_logging_its_content(stack):
    user = new_user("poison")
    # Not a SequenceStarted (its required sequence_id, contact_id and thread_id are missing): the consumer
    # refuses it at once. Written by hand, since no producer could publish it.
    poison = {"id": str(uuid.uuid4()), "type": "sequence.started", "user_id": user, "request_id": None,
              "occurred_at": dt.datetime.now(dt.UTC).isoformat(),
              "payload": {"contact_email": f"poison.{uuid.uuid4().hex[:6]}@example.com",
                          "user_email": f"poison.{uuid.uuid4().hex[:6]}@gmail.com"}}
    publish_as(stack, "mailer", [poison])
    assert wait_until(lambda: poison["id"] in dead_letters(stack, "reply-watcher"), timeout=90)
    text = (stack.config.log_dir / "reply-watcher.log").read_text(errors="replace")
    assert poison["id"] in text
    assert poison["payload"]["contact_email"] not in text and poison["payload"]["user_email"] not in text


def dead_letters(stack, service: str) -> str:
    """The bodies in a service's dead-letter queue, read as the operator and put back."""
    with Connection(stack.config.broker_url("operator")) as conn:
        channel = conn.channel()
        bodies = []
        while (message := channel.basic_get(f"{stack.config.messaging_prefix}.{service}.dead")) is not None:
            bodies.append(bytes(message.body).decode(errors="replace"))
        channel.basic_recover(requeue=True)
    return "\n".join(bodies)
