"""A compromised service on the event bus: each prohibited publish is refused by RabbitMQ, or dropped by
the consumer with a log line, and nothing changes.

The whole system runs as a user runs it (the shared ``stack``): its own vhost, one broker login per
service (``deploy/bootstrap_broker.py``), and the services' own credentials used here as an insider
who stole them would.
"""

from __future__ import annotations

import time
import uuid

import amqp.exceptions
import psycopg
import pytest
import requests
from kombu import Connection

from coffeeping.common.messaging import make_envelope
from coffeeping.events.v1 import events_pb2 as ev
from tests.e2e.journey import (
    CONFIRM,
    deletion,
    new_user,
    publish_as,
    refresh_answer,
    refresh_token_of,
    seed,
    wait_completed,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)

REFUSED = (amqp.exceptions.AccessRefused, amqp.exceptions.PreconditionFailed, amqp.exceptions.NotAllowed)


def deletion_id() -> str:
    return str(uuid.uuid4())


def log_has(stack, service: str, text: str, event_id: str) -> bool:
    path = stack.config.log_dir / f"{service}.log"
    return any(text in line and event_id in line for line in path.read_text(errors="replace").splitlines())


@pytest.mark.parametrize(("login", "message"), [
    ("mailer", ev.AccountRevokeRequested(deletion_id=deletion_id())),  # would make the vault revoke and purge any user
    ("mailer", ev.AccountDeletionRequested(deletion_id=deletion_id())),
    ("reply-watcher", ev.SequenceStarted(sequence_id="s1", contact_id="c1", thread_id="t1")),
    ("reply-watcher", ev.GmailDisconnected(reason="needs_reconnect")),
    ("token-vault", ev.ReplyDetected(contact_id="c1", thread_id="t1", message_id="m1")),
    ("accounts", ev.AccountPurged(deletion_id=deletion_id(), service="accounts")),
], ids=lambda value: value if isinstance(value, str) else type(value).__name__)
def test_a_service_publishing_a_type_it_does_not_own_is_refused_by_the_broker(stack, login, message):
    user = new_user("forge")
    with pytest.raises(REFUSED):
        publish_as(stack, login, [make_envelope(user, message)])


def test_the_mailer_cannot_sign_as_accounts_nor_write_into_the_vaults_queue(stack):
    user = new_user("imperson")
    forged = make_envelope(user, ev.AccountRevokeRequested(deletion_id=deletion_id()))
    with pytest.raises(REFUSED):
        publish_as(stack, "mailer", [forged], user_id=f"{stack.config.messaging_prefix}-accounts")
    with pytest.raises(REFUSED):
        publish_as(stack, "mailer", [forged], exchange="", routing_key=f"{stack.config.messaging_prefix}.token-vault")


def test_guest_and_the_gateway_have_no_way_onto_the_bus(stack):
    guest = stack.config.rabbitmq_url.rsplit("/", 1)[0] + "/" + stack.config.rabbitmq_vhost
    with pytest.raises(Exception) as refused, Connection(guest, connect_timeout=5) as conn:
        conn.connect()
    assert "ACCESS_REFUSED" in str(refused.value) or isinstance(refused.value, REFUSED)
    assert "RABBITMQ_URL" not in stack.config.env("auth-gateway")


def test_the_watcher_reporting_account_purged_for_the_vault_is_dropped_and_the_grant_stays(stack):
    user = new_user("purgeforge")
    http = stack.session(user)
    data = seed(stack, http, "purgeforge", contacts=0, with_drafts=False)
    token = refresh_token_of(stack, data["email"])
    requests.post(f"{stack.google}/_sandbox/faults", json={"method": "oauth.revoke", "status": 503, "count": 10_000},
                  timeout=10).raise_for_status()
    try:
        assert http.delete("/v1/account", json=CONFIRM).status_code == 202
        assert wait_until(lambda: {s["service"]: s["state"] for s in deletion(http)["steps"]}["token-vault"]
                          == "running", timeout=60)
        forged = make_envelope(user, ev.AccountPurged(deletion_id=deletion(http)["deletion_id"],
                                                      service="token-vault"))
        publish_as(stack, "reply-watcher", [forged])  # the broker lets the watcher report its own purge
        assert wait_until(lambda: log_has(stack, "accounts", "message refused", forged["id"]), timeout=30)
        time.sleep(1)
        status = deletion(http)
        assert status["state"] != "completed"
        assert {s["service"]: s["state"] for s in status["steps"]}["token-vault"] == "running"
        assert refresh_answer(stack, token).status_code == 200  # the grant is alive until the vault revokes
    finally:
        requests.delete(f"{stack.google}/_sandbox/faults", params={"method": "oauth.revoke"}, timeout=10)
    wait_completed(http)
    assert refresh_answer(stack, token).json()["error"] == "invalid_grant"


def test_a_message_without_a_verified_sender_is_dropped(stack):
    user = new_user("unsigned")
    thread = f"thread-{uuid.uuid4().hex[:8]}"
    unsigned = make_envelope(user, ev.SequenceStarted(
        sequence_id=str(uuid.uuid4()), contact_id=str(uuid.uuid4()), contact_email="x@example.com",
        thread_id=thread, message_id="m1", history_id=1, user_email="y@gmail.com"))
    publish_as(stack, "mailer", [unsigned], user_id=None)  # the topic is the mailer's, but nobody signed it
    assert wait_until(lambda: log_has(stack, "reply-watcher", "message refused", unsigned["id"]), timeout=30)
    with psycopg.connect(stack.database.admin_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM watcher.watches WHERE user_id = %s", (user,)).fetchone() == (0,)
