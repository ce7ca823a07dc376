"""The vault's step of the account-deletion saga: ``account.revoke_requested`` buries the user at once
and queues the revocation; the revocation is retried until Google confirms it (however long Google is
down), and only then is every vault row of the user purged and ``account.purged`` reported. A deleted
account is never served or stored again. Also: a connection while KMS is down stores nothing."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
import requests
from google.protobuf.timestamp_pb2 import Timestamp
from kombu import Connection, Exchange, Queue

from bench.vault_harness import CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, SCOPES, new_user
from coffeeping.common.messaging import make_envelope
from coffeeping.common.messaging.topology import DEFAULT_DELIVERY_LIMIT
from coffeeping.common.rpc import call_metadata
from coffeeping.common.tombstones import subject
from coffeeping.events.v1 import events_pb2 as ev
from coffeeping.vault.v1 import vault_pb2

METADATA_SCOPE = "https://www.googleapis.com/auth/gmail.metadata"
# Every vault table keyed by user id (the outbox keeps the report until the relay has published it).
USER_TABLES = ("grants", "data_keys", "scoped_tokens", "audit", "state_nonces", "revocations", "inbox")


def _wait(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _count(vault, table: str, user: str) -> int:
    return vault.db.rows(f"SELECT count(*) FROM vault.{table} WHERE user_id = %s", user)[0][0]


def _holds_nothing(vault, user: str) -> bool:
    return all(_count(vault, t, user) == 0 for t in USER_TABLES)


def _revocation(vault, user: str) -> tuple[int, str | None] | None:
    rows = vault.db.rows("SELECT attempts, last_error FROM vault.revocations WHERE user_id = %s", user)
    return rows[0] if rows else None


def _refresh_refused(vault, refresh_token: str) -> str:
    """What Google's token endpoint says to a refresh with ``refresh_token`` ("" when it accepts it)."""
    reply = requests.post(f"{vault.google.google_url}/token", timeout=10, data={
        "grant_type": "refresh_token", "refresh_token": refresh_token,
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})
    return "" if reply.status_code == 200 else reply.json().get("error", f"http {reply.status_code}")


def _refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value


@dataclass
class Saga:
    """Plays the accounts service: publishes ``account.revoke_requested``, collects ``account.purged``."""

    vault: object
    conn: Connection
    probe: Queue
    events: Exchange
    reports: list[dict] = field(default_factory=list)

    def request_revoke(self, user: str, deletion_id: str, envelope: dict | None = None) -> dict:
        envelope = envelope or make_envelope(user, ev.AccountRevokeRequested(deletion_id=deletion_id))
        # The operator's login may sign as accounts, the event's registered producer.
        self.conn.Producer().publish(json.dumps(envelope), exchange=self.events, routing_key=envelope["type"],
                                     content_type="application/json", message_id=envelope["id"],
                                     user_id=f"{self.vault.prefix}-accounts")
        return envelope

    def purged_reports(self, user: str) -> list[dict]:
        while (message := self.probe(self.conn.channel()).get(no_ack=True)) is not None:
            self.reports.append(json.loads(message.body))
        return [r for r in self.reports if r["user_id"] == user and r["type"] == "account.purged"]

    def wait_reports(self, user: str, count: int, timeout: float = 30.0) -> list[dict]:
        _wait(lambda: len(self.purged_reports(user)) >= count, timeout, f"{count} account.purged report(s)")
        return self.purged_reports(user)

    def queue_depth(self, name: str) -> int:
        return int(self.conn.channel().queue_declare(name, passive=True).message_count)


def _queue_exists(conn: Connection, name: str) -> bool:
    try:
        conn.channel().queue_declare(name, passive=True)
        return True
    except Exception:  # noqa: BLE001 - not declared yet
        return False


@pytest.fixture
def saga(vault) -> Iterator[Saga]:
    events = Exchange(f"{vault.prefix}.events", type="topic", durable=True)
    # The same probe queue as test_vault_lifecycle (conftest deletes it with the topology).
    probe = Queue(f"{vault.prefix}.probe", exchange=events, routing_key="account.purged", durable=False)
    with Connection(vault.amqp_url, connect_timeout=5) as conn:
        probe(conn.channel()).declare()
        _wait(lambda: _queue_exists(conn, f"{vault.prefix}.token-vault"), what="the vault's queue")
        yield Saga(vault, conn, probe, events)


def _connected_and_used(vault, user: str, email: str) -> None:
    """A grant with a scoped token, a state nonce, an audit trail and tokens cached in both processes."""
    vault.connect(user, email)
    for process in vault.processes:
        vault.access_token(user, "mailer", process)
        vault.access_token(user, "reply-watcher", process, scopes=(METADATA_SCOPE,))
    nonce = vault.stub("auth-gateway").ConsumeStateNonce(vault_pb2.ConsumeStateNonceRequest(
        nonce="n-" + uuid.uuid4().hex, expires_at=_in_ten_minutes()), metadata=call_metadata(user), timeout=10)
    assert nonce.fresh
    assert all(_count(vault, t, user) for t in ("grants", "data_keys", "scoped_tokens", "audit", "state_nonces"))


def _in_ten_minutes() -> Timestamp:
    stamp = Timestamp()
    stamp.FromSeconds(int(time.time()) + 600)
    return stamp


def _assert_served_nothing(vault, user: str) -> None:
    for process in vault.processes:
        for caller, scopes in (("mailer", ()), ("reply-watcher", (METADATA_SCOPE,))):
            refused = _refused(lambda p=process, c=caller, s=scopes: vault.access_token(user, c, p, scopes=s))
            assert refused.code() == grpc.StatusCode.NOT_FOUND
    assert vault.grant_info(user).connected is False


# -- the revocation outlasts any Google outage ---------------------------------------------------------

def test_a_google_outage_longer_than_the_delivery_limit_keeps_the_grant_until_google_confirms(vault, saga):
    user, email = new_user("outage")
    _connected_and_used(vault, user, email)
    refresh_tokens = vault.refresh_tokens(email)
    assert refresh_tokens and not _refresh_refused(vault, refresh_tokens[0])
    vault.google.control.arm("oauth.revoke", 503, count=100_000)
    deletion_id = str(uuid.uuid4())
    saga.request_revoke(user, deletion_id)

    # Each attempt is a whole GoogleOAuth.revoke (with its own retries); wait for more attempts than the
    # broker would have delivered the request to a handler that called Google itself.
    def failing_long_enough() -> bool:
        state = _revocation(vault, user)
        return state is not None and state[0] > DEFAULT_DELIVERY_LIMIT

    _wait(failing_long_enough, timeout=120, what="repeated failed revocations")
    attempts, last_error = _revocation(vault, user)
    assert last_error == "google_unavailable"
    assert _count(vault, "grants", user) == 1 and _count(vault, "data_keys", user) == 1  # kept while unconfirmed
    assert not any(g["revoked"] for g in vault.google.oauth.grants_snapshot() if g["email"] == email)
    assert saga.purged_reports(user) == []
    # The request was handled and acknowledged at once: nothing waits or was dead-lettered.
    assert saga.queue_depth(f"{vault.prefix}.token-vault") == 0
    assert saga.queue_depth(f"{vault.prefix}.token-vault.dead") == 0
    assert _count(vault, "inbox", user) == 0
    # Buried already: no process serves the user, not even from the tokens it had in memory.
    _assert_served_nothing(vault, user)

    vault.google.control.clear_faults()
    reports = saga.wait_reports(user, 1)
    assert reports[0]["payload"] == {"deletion_id": deletion_id, "service": "token-vault"}
    assert _holds_nothing(vault, user)
    assert all(g["revoked"] for g in vault.google.oauth.grants_snapshot() if g["email"] == email)
    assert {_refresh_refused(vault, token) for token in refresh_tokens} == {"invalid_grant"}
    vault.settle()  # longer than an audit flush interval: nothing queued brings the trail back
    assert _holds_nothing(vault, user)
    logs = "".join(process.log.read_text() for process in vault.processes)
    assert deletion_id in logs and user not in logs and email not in logs  # the deletion, never the user


def test_a_revoke_answered_400_already_revoked_confirms_the_revocation(vault, saga):
    user, email = new_user("gone400")
    _connected_and_used(vault, user, email)
    vault.google.oauth.revoke_grants(email=email)  # the user removed our access in their Google account
    revokes_before = vault.google.control.count("oauth.revoke")
    deletion_id = str(uuid.uuid4())
    saga.request_revoke(user, deletion_id)
    reports = saga.wait_reports(user, 1)
    assert reports[0]["payload"]["deletion_id"] == deletion_id
    assert vault.google.control.count("oauth.revoke") == revokes_before + 1  # answered 400, not retried
    assert _holds_nothing(vault, user)


# -- a deleted account stays deleted -------------------------------------------------------------------

def test_after_the_purge_nothing_is_served_or_stored_and_a_redelivery_reports_again(vault, saga):
    user, email = new_user("afterpurge")
    _connected_and_used(vault, user, email)
    deletion_id = str(uuid.uuid4())
    envelope = saga.request_revoke(user, deletion_id)
    saga.wait_reports(user, 1)
    assert _holds_nothing(vault, user)

    _assert_served_nothing(vault, user)
    gateway = vault.stub("auth-gateway")
    code, verifier = vault.authorize(email)
    exchanges = vault.google.control.count("oauth.token")
    refused = _refused(lambda: gateway.CompleteConnection(vault_pb2.CompleteConnectionRequest(
        code=code, code_verifier=verifier, redirect_uri=REDIRECT_URI), metadata=call_metadata(user), timeout=30))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION and refused.details() == "account_deleted"
    assert vault.google.control.count("oauth.token") == exchanges  # the code was never exchanged
    nonce = gateway.ConsumeStateNonce(vault_pb2.ConsumeStateNonceRequest(nonce="n-" + uuid.uuid4().hex,
                                                                         expires_at=_in_ten_minutes()),
                                      metadata=call_metadata(user), timeout=10)
    assert nonce.fresh is False
    assert vault.stub("auth-gateway").RevokeGrant(vault_pb2.RevokeGrantRequest(reason="user_disconnected"),
                                                  metadata=call_metadata(user), timeout=10).revoked is False

    saga.request_revoke(user, deletion_id, envelope)  # the same message, delivered again
    reports = saga.wait_reports(user, 2)
    assert [r["payload"]["deletion_id"] for r in reports] == [deletion_id, deletion_id]
    vault.settle()
    assert _holds_nothing(vault, user)
    key = vault.env()["TOMBSTONE_KEY"].encode()
    assert vault.db.rows("SELECT count(*) FROM vault.tombstones WHERE subject = %s", subject(key, user)) == [(1,)]


# -- KMS down while connecting --------------------------------------------------------------------------

def test_kms_down_during_a_connect_stores_nothing_revokes_the_new_grant_and_a_later_connect_works(vault):
    user, email = new_user("kmsconnect")
    vault.google.control.arm("kms.Encrypt", "UNAVAILABLE", count=100_000)
    refused = _refused(lambda: vault.connect(user, email))
    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    assert refused.details().startswith("kms_unavailable:") and "nothing was changed" in refused.details()
    assert _count(vault, "grants", user) == 0 and _count(vault, "data_keys", user) == 0
    at_google = [g for g in vault.google.oauth.grants_snapshot() if g["email"] == email]
    assert at_google and all(g["revoked"] for g in at_google)  # no dangling grant at Google

    vault.google.control.clear_faults()
    info = vault.connect(user, email)
    assert info.connected and info.email == email and set(SCOPES) <= set(info.scopes)
    assert vault.access_token(user).access_token
    assert _count(vault, "grants", user) == 1 and _count(vault, "data_keys", user) == 1
