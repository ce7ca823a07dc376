"""Start-up checks, re-wrapping data keys, and the vault's step of the account-deletion saga."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import grpc
import pytest
from kombu import Connection, Exchange, Queue

from bench.vault_harness import KMS_KEY, free_port, new_user
from coffeeping.common.messaging import make_envelope
from coffeeping.events.v1 import events_pb2 as ev


def _run(vault, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coffeeping_vault", *args], env=vault.env(GRPC_PORT=str(free_port()),
                          **env), capture_output=True, text=True, timeout=60)


def test_the_vault_refuses_to_start_without_a_key_or_with_a_malformed_one(vault):
    neither = _run(vault, KMS_KEY_NAME="", TOKEN_VAULT_LOCAL_KEY="")
    assert neither.returncode == 2
    assert "KMS_KEY_NAME or TOKEN_VAULT_LOCAL_KEY is required" in neither.stderr
    for bad in ("not-base64!!", "c2hvcnQ="):  # not base64; base64 of 5 bytes
        malformed = _run(vault, KMS_KEY_NAME="", TOKEN_VAULT_LOCAL_KEY=bad)
        assert malformed.returncode == 2
        assert "TOKEN_VAULT_LOCAL_KEY" in malformed.stderr and bad not in malformed.stderr
    bad_kms = _run(vault, KMS_KEY_NAME="my-key")
    assert bad_kms.returncode == 2 and "KMS_KEY_NAME" in bad_kms.stderr


def test_rewrap_moves_every_data_key_to_the_current_kms_version_while_serving(vault):
    local_only = vault.start(KMS_KEY_NAME="")
    try:
        old, old_email = new_user("rewraplocal")
        vault.connect(old, old_email, process=local_only)
    finally:
        vault.processes.remove(local_only)
        local_only.stop()
    current, current_email = new_user("rewrapkms")
    vault.connect(current, current_email)
    assert vault.db.rows("SELECT wrapping FROM vault.data_keys WHERE user_id = %s", old) == [("local",)]
    new_version = vault.google.kms.rotate(KMS_KEY)

    done = _run(vault, "rewrap")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # Keys another test deliberately corrupted fail (and are counted); every other key moves.
    assert report["rewrapped"] >= 2
    assert report["seen"] == report["rewrapped"] + report["current"] + report["failed"]
    for user in (old, current):
        assert vault.db.rows("SELECT wrapping, kms_key_version FROM vault.data_keys WHERE user_id = %s", user) == [
            ("kms", new_version)]
    assert vault.access_token(current).access_token  # the running vault kept serving
    cold = vault.start()  # a process with an empty key cache unwraps the re-wrapped keys
    try:
        for user in (old, current):
            assert vault.access_token(user, process=cold).access_token
    finally:
        vault.processes.remove(cold)
        cold.stop()


def _wait(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_account_revoke_requested_revokes_at_google_purges_every_row_and_reports(vault):
    user, email = new_user("purge")
    vault.connect(user, email)
    for process in vault.processes:  # issue records queued in both processes' audit writers
        for _ in range(20):
            vault.access_token(user, process=process)
    deletion_id = str(uuid.uuid4())
    events = Exchange(f"{vault.prefix}.events", type="topic", durable=True)
    probe = Queue(f"{vault.prefix}.probe", exchange=events, routing_key="account.purged", durable=False)
    envelope = make_envelope(user, ev.AccountRevokeRequested(deletion_id=deletion_id))
    with Connection(vault.amqp_url, connect_timeout=5) as conn:
        probe(conn.channel()).declare()
        _wait(lambda: _queue_exists(conn, f"{vault.prefix}.token-vault"))
        producer = conn.Producer()
        for _ in range(2):  # a duplicate delivery is harmless
            producer.publish(json.dumps(envelope), exchange=events, routing_key="account.revoke_requested",
                             content_type="application/json", message_id=envelope["id"],
                             user_id=f"{vault.prefix}-accounts")

        def purged() -> bool:
            return all(vault.db.rows(f"SELECT count(*) FROM vault.{t} WHERE user_id = %s", user) == [(0,)]
                       for t in ("grants", "data_keys", "audit", "state_nonces"))

        _wait(purged)
        reports = []
        _wait(lambda: _drain(conn, probe, reports, user))
    assert reports[0]["payload"] == {"deletion_id": deletion_id, "service": "token-vault"}
    assert all(g["revoked"] for g in vault.google.oauth.grants_snapshot() if g["email"] == email)
    with pytest.raises(grpc.RpcError) as gone:
        vault.access_token(user)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    vault.settle()  # longer than an audit flush interval: nothing queued brings the trail back
    assert vault.db.rows("SELECT count(*) FROM vault.audit WHERE user_id = %s", user) == [(0,)]
    assert vault.grant_info(user).connected is False


def _queue_exists(conn: Connection, name: str) -> bool:
    try:
        conn.channel().queue_declare(name, passive=True)
        return True
    except Exception:  # noqa: BLE001 - not declared yet
        return False


def _drain(conn: Connection, queue: Queue, into: list, user: str) -> bool:
    message = queue(conn.channel()).get(no_ack=True)
    if message is not None:
        body = json.loads(message.body)
        if body["user_id"] == user:
            into.append(body)
    return bool(into)
