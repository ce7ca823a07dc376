"""Export, account deletion and the Clerk webhook through the public API, against the sandbox.

The whole system runs as a user runs it (the shared ``stack``). Each test uses its own user id and
Google account. The completeness proof walks every table of every schema as the superuser.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import time
import uuid

import psycopg
import pytest
import requests
from svix.webhooks import Webhook

from coffeeping.common.messaging import make_envelope
from coffeeping.events.v1 import events_pb2 as ev
from tests.e2e.journey import (
    CONFIRM,
    assert_nothing_left,
    deletion,
    drafts_in,
    export_of,
    new_user,
    publish_as,
    refresh_answer,
    refresh_token_of,
    seed,
    wait_completed,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)


# -- export ------------------------------------------------------------------------------------------


def test_export_of_a_new_user_has_every_section_described_and_is_complete(stack):
    user = new_user("exp")
    http = stack.session(user)
    assert http.get("/v1/me").status_code == 200
    doc = export_of(http)
    assert doc["schema_version"] == 1 and doc["complete"] is True
    assert set(doc["sections"]) >= {"profile", "gmail_connection", "contacts", "sequences", "replies", "vault_audit"}
    assert all(section["description"] for section in doc["sections"].values())
    assert doc["sections"]["profile"]["records"][0]["user_id"] == user


def test_export_refuses_an_unknown_format_and_is_rate_limited(stack):
    http = stack.session(new_user("expl"))
    bad = http.get("/v1/export", params={"format": "xml"})
    assert bad.status_code == 422 and bad.headers["Content-Type"] == "application/problem+json"
    statuses = [http.get("/v1/export").status_code for _ in range(6)]
    assert 429 in statuses


# -- deletion refusals and the Clerk webhook ----------------------------------------------------------


@pytest.mark.parametrize("body", [None, {}, {"confirm": "Delete my account"}, {"confirm": "yes"},
                                  {"confirm": True}, ["delete my account"]])
def test_delete_account_without_the_exact_confirmation_is_422_and_starts_nothing(stack, body):
    http = stack.session(new_user("del422"))
    reply = http.delete("/v1/account", json=body) if body is not None else http.delete("/v1/account")
    assert reply.status_code == 422, reply.text
    assert reply.headers["Content-Type"] == "application/problem+json"
    assert reply.json()["errors"][0]["field"] == "confirm"
    assert http.get("/v1/account/deletion").status_code == 404
    assert http.get("/v1/me").status_code == 200


def test_delete_account_needs_a_session(stack):
    assert requests.delete(f"{stack.url}/v1/account", json=CONFIRM, timeout=10).status_code == 401
    assert requests.get(f"{stack.url}/v1/account/deletion", timeout=10).status_code == 401
    assert requests.get(f"{stack.url}/v1/export", timeout=10).status_code == 401


def clerk_delivery(stack, payload: dict, *, msg_id: str | None = None, at: dt.datetime | None = None,
                   secret: str | None = None) -> tuple[bytes, dict]:
    body = json.dumps(payload)
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    at = at or dt.datetime.now(dt.UTC)
    signer = Webhook(secret or stack.config.env("auth-gateway")["CLERK_WEBHOOK_SECRET"])
    headers = {"svix-id": msg_id, "svix-timestamp": str(int(at.timestamp())),
               "svix-signature": signer.sign(msg_id, at, body), "Content-Type": "application/json"}
    return body.encode(), headers


def user_deleted(user: str) -> dict:
    return {"type": "user.deleted", "object": "event", "data": {"id": user, "object": "user", "deleted": True}}


def test_clerk_webhook_with_a_bad_signature_is_400_and_does_nothing(stack):
    user = new_user("whbad")
    http = stack.session(user)
    assert http.get("/v1/me").status_code == 200
    url = f"{stack.url}/v1/webhooks/clerk"
    body, headers = clerk_delivery(stack, user_deleted(user))
    cases = {
        "tampered body": (body.replace(user.encode(), b"user_other"), headers),
        "foreign secret": clerk_delivery(stack, user_deleted(user), secret="whsec_" + "A" * 32),
        "stale timestamp": clerk_delivery(stack, user_deleted(user),
                                          at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=6)),
        "future timestamp": clerk_delivery(stack, user_deleted(user),
                                           at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=6)),
        "no signature": (body, {k: v for k, v in headers.items() if k != "svix-signature"}),
        "malformed signature": (body, {**headers, "svix-signature": "garbage"}),
        "bad base64": (body, {**headers, "svix-signature": "v1,@@@"}),
    }
    for name, (data, hdrs) in cases.items():
        reply = requests.post(url, data=data, headers=hdrs, timeout=10)
        assert reply.status_code == 400, (name, reply.status_code, reply.text)
        assert reply.headers["Content-Type"] == "application/problem+json"
    assert http.get("/v1/account/deletion").status_code == 404
    assert http.get("/v1/me").status_code == 200


def test_clerk_webhook_ignores_other_event_types(stack):
    user = new_user("whother")
    http = stack.session(user)
    for kind in ("user.created", "user.updated", "session.created"):
        body, headers = clerk_delivery(stack, {"type": kind, "data": {"id": user}})
        reply = requests.post(f"{stack.url}/v1/webhooks/clerk", data=body, headers=headers, timeout=10)
        assert reply.status_code == 204, reply.text
    assert http.get("/v1/account/deletion").status_code == 404


def test_clerk_user_deleted_starts_the_deletion_once_and_blocks_sign_in(stack):
    user = new_user("whdel")
    http = stack.session(user)
    assert http.get("/v1/me").status_code == 200
    body, headers = clerk_delivery(stack, user_deleted(user))
    first = requests.post(f"{stack.url}/v1/webhooks/clerk", data=body, headers=headers, timeout=10)
    assert first.status_code == 200, first.text
    replay = requests.post(f"{stack.url}/v1/webhooks/clerk", data=body, headers=headers, timeout=10)
    assert replay.status_code == 200
    assert replay.json()["deletion_id"] == first.json()["deletion_id"]
    status = deletion(http)
    assert status["deletion_id"] == first.json()["deletion_id"]
    gone = http.get("/v1/me")
    assert gone.status_code == 410 and gone.json()["links"]["status"] == "/v1/account/deletion"
    final = wait_completed(http)
    assert final["deletion_id"] == first.json()["deletion_id"]
    # A replay after completion changes nothing.
    late = requests.post(f"{stack.url}/v1/webhooks/clerk", data=body, headers=headers, timeout=10)
    assert late.json() == {"deletion_id": final["deletion_id"], "state": "completed"}


# -- the whole journey and the proof of completeness --------------------------------------------------


def test_a_user_with_data_exports_everything_deletes_and_nothing_is_left(stack):
    user = new_user("proof")
    http = stack.session(user)
    assert http.get("/v1/me").status_code == 200
    data = seed(stack, http, "proof")
    refresh_token = refresh_token_of(stack, data["email"])
    assert refresh_answer(stack, refresh_token).status_code == 200

    doc = export_of(http)
    sections = doc["sections"]
    for name in ("profile", "gmail_connection", "contacts", "sequences", "vault_audit"):
        assert sections[name]["records"], f"section {name} is empty"
    assert "replies" in sections
    assert sections["gmail_connection"]["records"][0]["email"] == data["email"]
    assert {c["email"] for c in sections["contacts"]["records"]} >= set(data["contacts"])
    assert refresh_token not in json.dumps(doc)

    started = http.delete("/v1/account", json=CONFIRM)
    assert started.status_code == 202, started.text
    assert started.headers["Location"] == "/v1/account/deletion"
    assert started.json()["links"]["status"] == "/v1/account/deletion"
    again = http.delete("/v1/account", json=CONFIRM)
    assert again.json()["deletion_id"] == started.json()["deletion_id"]
    final = wait_completed(http)
    assert {(s["service"], s["state"]) for s in final["steps"]} == {
        ("mailer", "done"), ("reply-watcher", "done"), ("token-vault", "done"), ("accounts", "done")}

    refused = refresh_answer(stack, refresh_token)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert drafts_in(stack, data["email"]) == []
    assert_nothing_left(stack, [user, data["email"], *data["contacts"]])
    # The status stays answerable; the deleted user id never gets an account back.
    assert deletion(http)["state"] == "completed"
    for path in ("/v1/me", "/v1/export", "/v1/contacts", "/v1/sequences"):
        assert http.get(path).status_code == 410, path
    assert http.post("/v1/gmail/connect").status_code == 410


# -- faults -------------------------------------------------------------------------------------------


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


def test_rabbitmq_stopped_during_a_deletion_delays_it_and_loses_nothing(stack):
    user = new_user("mqdown")
    http = stack.session(user)
    data = seed(stack, http, "mqdown", contacts=0, with_drafts=False)
    # The broker is shared: keep the outage short and always bring it back.
    rabbitmqctl("stop_app")
    try:
        started = http.delete("/v1/account", json=CONFIRM)
        assert started.status_code == 202, started.text
        time.sleep(3)
        assert deletion(http)["state"] == "in_progress"
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
    wait_completed(http, timeout=120)
    assert_nothing_left(stack, [user, data["email"], *data["contacts"]])


def test_a_vault_killed_mid_purge_gets_the_event_again_and_the_end_state_is_the_same(stack):
    user = new_user("kill")
    http = stack.session(user)
    data = seed(stack, http, "kill", contacts=0, with_drafts=False)
    refresh_token = refresh_token_of(stack, data["email"])
    # A slow revocation at Google, so that the vault is inside its purge when it dies.
    requests.post(f"{stack.google}/_sandbox/latency", json={"ms": 3000, "method": "oauth.revoke"},
                  timeout=10).raise_for_status()
    def revocations() -> int:
        return len(requests.get(f"{stack.google}/_sandbox/requests", params={"prefix": "oauth.revoke"},
                                timeout=10).json()["requests"])

    before = revocations()
    try:
        assert http.delete("/v1/account", json=CONFIRM).status_code == 202
        assert wait_until(lambda: revocations() > before, timeout=30), "the vault never called revoke"
        stack.stack.stop_service("token-vault", sig=signal.SIGKILL)
    finally:
        requests.post(f"{stack.google}/_sandbox/latency", json={"ms": 0, "method": "oauth.revoke"}, timeout=10)
        stack.stack.start_and_wait("token-vault")
    wait_completed(http, timeout=120)
    assert refresh_answer(stack, refresh_token).json()["error"] == "invalid_grant"
    assert_nothing_left(stack, [user, data["email"]])


def test_revoke_failing_three_times_then_succeeding_still_completes(stack):
    user = new_user("revoke")
    http = stack.session(user)
    data = seed(stack, http, "revoke", contacts=0, with_drafts=False)
    refresh_token = refresh_token_of(stack, data["email"])
    requests.post(f"{stack.google}/_sandbox/faults", json={"method": "oauth.revoke", "status": 503, "count": 3},
                  timeout=10).raise_for_status()
    try:
        assert http.delete("/v1/account", json=CONFIRM).status_code == 202
        wait_completed(http, timeout=120)
    finally:
        requests.delete(f"{stack.google}/_sandbox/faults", params={"method": "oauth.revoke"}, timeout=10)
    assert refresh_answer(stack, refresh_token).json()["error"] == "invalid_grant"
    assert_nothing_left(stack, [user, data["email"]])


def test_a_duplicated_deletion_event_is_harmless(stack):
    user = new_user("dup")
    http = stack.session(user)
    data = seed(stack, http, "dup", contacts=0, with_drafts=False)
    assert http.delete("/v1/account", json=CONFIRM).status_code == 202
    deletion_id = deletion(http)["deletion_id"]
    with psycopg.connect(stack.database.admin_url, autocommit=True) as conn:
        original = [row[0] for row in conn.execute(
            "SELECT body FROM accounts.outbox WHERE user_id = %s AND routing_key = 'account.deletion_requested'",
            (user,))]
    final = wait_completed(http)
    # The same event again (when it was caught before completion cleared it), and the same request under
    # a new event id, after completion.
    fresh = make_envelope(user, ev.AccountDeletionRequested(deletion_id=deletion_id))
    publish_as(stack, "accounts", [*original, fresh])
    time.sleep(5)
    assert deletion(http) == final
    assert_nothing_left(stack, [user, data["email"], *data["contacts"]])
