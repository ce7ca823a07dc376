"""The token vault's promises, tested against real vault processes, PostgreSQL and the sandbox's
Google OAuth and Cloud KMS."""

from __future__ import annotations

import datetime as dt
import json
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from bench.vault_harness import REDIRECT_URI, new_user
from coffeeping.common.rpc import call_metadata
from coffeeping.types.v1 import export_pb2
from coffeeping.vault.v1 import vault_pb2
from coffeeping_vault.kms import CloudKmsWrapper

METADATA = "https://www.googleapis.com/auth/gmail.metadata"


def _code(exc_info: pytest.ExceptionInfo) -> grpc.StatusCode:
    return exc_info.value.code()


def _outbox_types(vault, user: str) -> list[str]:
    return [r[0] for r in vault.db.rows("SELECT routing_key FROM vault.outbox WHERE user_id = %s ORDER BY created_at",
                                        user)]


# -- who may do what ---------------------------------------------------------------------------------

def test_only_the_mailer_and_the_reply_watcher_obtain_access_tokens(vault):
    user, email = new_user("authz")
    vault.connect(user, email)
    assert vault.access_token(user, "mailer").access_token
    assert vault.access_token(user, "reply-watcher", scopes=(METADATA,)).access_token
    for caller in ("auth-gateway", "accounts", "token-vault"):
        with pytest.raises(grpc.RpcError) as refused:
            vault.access_token(user, caller)
        assert _code(refused) == grpc.StatusCode.PERMISSION_DENIED


def test_only_the_gateway_stores_a_grant_or_consumes_state_nonces(vault):
    user, email = new_user("authz2")
    code, verifier = vault.authorize(email)
    for caller in ("mailer", "reply-watcher", "accounts"):
        with pytest.raises(grpc.RpcError) as refused:
            vault.stub(caller).CompleteConnection(
                vault_pb2.CompleteConnectionRequest(code=code, code_verifier=verifier, redirect_uri=REDIRECT_URI),
                metadata=call_metadata(user), timeout=10)
        assert _code(refused) == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as refused:
            vault.stub(caller).ConsumeStateNonce(vault_pb2.ConsumeStateNonceRequest(nonce="n"),
                                                 metadata=call_metadata(user), timeout=10)
        assert _code(refused) == grpc.StatusCode.PERMISSION_DENIED
    assert vault.grant_info(user).connected is False


def test_no_method_returns_a_refresh_token(vault):
    text_fields = [f.name for m in vault_pb2.DESCRIPTOR.message_types_by_name.values() for f in m.fields
                   if f.type in (f.TYPE_STRING, f.TYPE_BYTES)]
    assert not [name for name in text_fields if "refresh" in name]
    user, email = new_user("norefresh")
    stored = vault.connect(user, email)
    refresh_tokens = vault.refresh_tokens(email)
    assert refresh_tokens
    answers = [stored.SerializeToString(), vault.grant_info(user).SerializeToString(),
               vault.access_token(user).SerializeToString()]
    vault.expire(user)
    answers.append(vault.access_token(user).SerializeToString())
    answers += [r.SerializeToString() for r in vault.stub("accounts").ExportData(
        export_pb2.ExportRequest(), metadata=call_metadata(user), timeout=10)]
    for token in refresh_tokens:
        assert not any(token.encode() in answer for answer in answers)


# -- encryption at rest ------------------------------------------------------------------------------

def _all_vault_rows(vault) -> bytes:
    dump = b""
    for (table,) in vault.db.rows("SELECT tablename FROM pg_tables WHERE schemaname = 'vault'"):
        for row in vault.db.rows(f"SELECT * FROM vault.{table}"):
            for value in row:
                dump += bytes(value) if isinstance(value, (bytes, memoryview)) else str(value).encode()
                dump += b"\x00"
    return dump


def test_the_tables_hold_no_token_or_key_in_plain_text(vault):
    user, email = new_user("scan")
    vault.connect(user, email)
    access = vault.access_token(user).access_token
    vault.expire(user)
    refreshed = vault.access_token(user).access_token
    key_id, wrapped, grant_id = vault.db.rows(
        "SELECT k.key_id, k.wrapped, g.grant_id FROM vault.data_keys k JOIN vault.grants g USING (key_id) "
        "WHERE g.user_id = %s", user)[0]
    from coffeeping_vault.crypto import key_aad

    data_key = CloudKmsWrapper("projects/cp-test/locations/global/keyRings/vault/cryptoKeys/tokens",
                               vault.google.kms_addr).unwrap(bytes(wrapped), key_aad(user, str(grant_id)))
    dump = _all_vault_rows(vault)
    secrets_ = [access, refreshed, *vault.refresh_tokens(email)]
    for secret in secrets_:
        assert secret.encode() not in dump
    assert data_key not in dump and data_key.hex().encode() not in dump
    assert vault.local_key.encode() not in dump
    for process in vault.processes:
        log = process.log.read_bytes()
        assert not any(secret.encode() in log for secret in secrets_)


def test_a_ciphertext_moved_to_another_row_fails_to_decrypt(vault):
    alice, alice_email = new_user("movea")
    bob, bob_email = new_user("moveb")
    vault.connect(alice, alice_email)
    vault.connect(bob, bob_email)
    # Bob's row gets Alice's ciphertexts, and then Alice's data key too: neither opens.
    vault.db.execute("UPDATE vault.grants b SET access_ct = a.access_ct, refresh_ct = a.refresh_ct "
                     "FROM vault.grants a WHERE a.user_id = %s AND b.user_id = %s", alice, bob)
    for process in vault.processes:
        with pytest.raises(grpc.RpcError) as refused:
            vault.access_token(bob, process=process)
        assert _code(refused) == grpc.StatusCode.DATA_LOSS
    vault.db.execute("UPDATE vault.data_keys b SET wrapped = a.wrapped FROM vault.grants ga, vault.grants gb, "
                     "vault.data_keys a WHERE ga.user_id = %s AND gb.user_id = %s AND a.key_id = ga.key_id "
                     "AND b.key_id = gb.key_id", alice, bob)
    vault.start()  # a process with a cold key cache must unwrap Bob's (now Alice's) wrapped key
    try:
        with pytest.raises(grpc.RpcError) as refused:
            vault.access_token(bob, process=vault.processes[-1])
        assert _code(refused) == grpc.StatusCode.DATA_LOSS
    finally:
        vault.processes.pop().stop()
    assert vault.access_token(alice).access_token


def test_a_flipped_byte_in_a_stored_token_fails_closed(vault):
    user, email = new_user("flip")
    vault.connect(user, email)
    vault.db.execute("UPDATE vault.grants SET access_ct = set_byte(access_ct, 20, get_byte(access_ct, 20) # 1) "
                     "WHERE user_id = %s", user)
    with pytest.raises(grpc.RpcError) as refused:
        vault.access_token(user)
    assert _code(refused) == grpc.StatusCode.DATA_LOSS


# -- short-lived tokens ------------------------------------------------------------------------------

def test_a_token_with_more_than_five_minutes_left_is_served_without_a_refresh(vault):
    user, email = new_user("fresh")
    vault.connect(user, email)
    first = vault.access_token(user)
    second = vault.access_token(user, "mailer", vault.processes[1])
    assert first.access_token == second.access_token
    assert first.email == email and "https://www.googleapis.com/auth/gmail.send" in first.scopes
    assert vault.google.oauth.refresh_count(email) == 0


def test_concurrent_requests_for_an_expired_token_refresh_exactly_once_across_two_processes(vault):
    user, email = new_user("herd")
    vault.connect(user, email)
    old = vault.access_token(user).access_token
    vault.expire(user)
    with ThreadPoolExecutor(max_workers=60) as pool:
        tokens = list(pool.map(lambda i: vault.access_token(user, process=vault.processes[i % 2]).access_token,
                               range(120)))
    assert vault.google.oauth.refresh_count(email) == 1
    assert len(set(tokens)) == 1 and tokens[0] != old


def test_invalid_grant_marks_the_grant_needs_reconnect_at_once_without_retrying(vault):
    user, email = new_user("invalid")
    vault.connect(user, email)
    vault.google.oauth.revoke_grants(email=email)  # the user removed access in their Google account
    vault.expire(user)
    before = len([e for e in vault.google.control.log("oauth.token") if e.get("grant_type") == "refresh_token"])
    with pytest.raises(grpc.RpcError) as refused:
        vault.access_token(user)
    assert _code(refused) == grpc.StatusCode.FAILED_PRECONDITION
    after = len([e for e in vault.google.control.log("oauth.token") if e.get("grant_type") == "refresh_token"])
    assert after - before == 1
    info = vault.grant_info(user)
    assert info.status == "needs_reconnect" and not info.has_refresh_token
    with pytest.raises(grpc.RpcError) as again:
        vault.access_token(user, process=vault.processes[1])
    assert _code(again) == grpc.StatusCode.FAILED_PRECONDITION
    assert "gmail.disconnected" in _outbox_types(vault, user)
    body = vault.db.rows("SELECT body FROM vault.outbox WHERE user_id = %s AND routing_key = 'gmail.disconnected'",
                         user)[0][0]
    assert body["payload"] == {"reason": "needs_reconnect"}


def test_transient_refresh_failures_are_retried_and_then_answered_unavailable(vault):
    user, email = new_user("transient")
    vault.connect(user, email)
    vault.expire(user)
    vault.google.control.arm("oauth.token", 503, count=2)
    vault.google.control.arm("oauth.token", 429, count=1)
    assert vault.access_token(user).access_token  # succeeded on the fourth attempt
    vault.expire(user)
    vault.google.control.arm("oauth.token", 500, count=50)
    with pytest.raises(grpc.RpcError) as refused:
        vault.access_token(user)
    assert _code(refused) == grpc.StatusCode.UNAVAILABLE
    vault.google.control.clear_faults()
    assert vault.grant_info(user).status == "connected"
    assert vault.access_token(user).access_token


# -- connection refusals -----------------------------------------------------------------------------

def test_a_missing_scope_is_not_a_connection_and_names_the_scope(vault):
    user, email = new_user("scope")
    with pytest.raises(grpc.RpcError) as refused:
        vault.connect(user, email, untick=["gmail.compose", "gmail.send"])
    assert _code(refused) == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details() == "missing_scope:gmail.send,gmail.compose"
    assert vault.db.rows("SELECT count(*) FROM vault.grants WHERE user_id = %s", user) == [(0,)]


def test_a_different_google_account_on_reconsent_is_refused_and_the_first_grant_kept(vault):
    user, email = new_user("acct")
    vault.connect(user, email)
    with pytest.raises(grpc.RpcError) as refused:
        vault.connect(user, "someone-else-" + email)
    assert _code(refused) == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details() == "different_account"
    assert vault.grant_info(user).email == email
    assert vault.access_token(user).email == email


def test_reconsent_without_a_refresh_token_keeps_the_held_one(vault):
    user, email = new_user("keep")
    vault.connect(user, email)
    code, verifier = vault.authorize(email, prompt=False)
    vault.stub("auth-gateway").CompleteConnection(
        vault_pb2.CompleteConnectionRequest(code=code, code_verifier=verifier, redirect_uri=REDIRECT_URI),
        metadata=call_metadata(user), timeout=30)
    assert vault.grant_info(user).has_refresh_token
    vault.expire(user)
    assert vault.access_token(user).access_token
    assert vault.google.oauth.refresh_count(email) == 1


def test_a_bad_or_reused_code_is_refused_with_nothing_stored(vault):
    user, email = new_user("badcode")
    code, verifier = vault.authorize(email)
    request = vault_pb2.CompleteConnectionRequest(code=code, code_verifier="x" * 50, redirect_uri=REDIRECT_URI)
    with pytest.raises(grpc.RpcError) as refused:
        vault.stub("auth-gateway").CompleteConnection(request, metadata=call_metadata(user), timeout=30)
    assert _code(refused) == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "exchange_failed"
    assert vault.grant_info(user).connected is False


def test_kms_down_fails_new_grants_with_nothing_stored_while_cached_keys_keep_serving(vault):
    served, served_email = new_user("kmsok")
    vault.connect(served, served_email, process=vault.processes[0])
    vault.access_token(served, process=vault.processes[0])
    vault.google.control.arm("kms.Encrypt", "UNAVAILABLE", count=1000)
    vault.google.control.arm("kms.Decrypt", "UNAVAILABLE", count=1000)
    user, email = new_user("kmsdown")
    with pytest.raises(grpc.RpcError) as refused:
        vault.connect(user, email, process=vault.processes[0])
    assert _code(refused) == grpc.StatusCode.UNAVAILABLE
    assert vault.db.rows("SELECT count(*) FROM vault.grants WHERE user_id = %s", user) == [(0,)]
    assert vault.db.rows("SELECT count(*) FROM vault.data_keys WHERE user_id = %s", user) == [(0,)]
    assert vault.access_token(served, process=vault.processes[0]).access_token
    vault.expire(served)
    assert vault.access_token(served, process=vault.processes[0]).access_token  # a refresh needs no KMS either


# -- revocation --------------------------------------------------------------------------------------

def test_revoking_deletes_the_grant_only_after_google_confirms(vault):
    user, email = new_user("revoke")
    vault.connect(user, email)
    vault.google.control.arm("oauth.revoke", 503, count=50)
    with pytest.raises(grpc.RpcError) as refused:
        vault.stub("auth-gateway").RevokeGrant(vault_pb2.RevokeGrantRequest(reason="user_disconnected"),
                                               metadata=call_metadata(user), timeout=30)
    assert _code(refused) == grpc.StatusCode.UNAVAILABLE
    assert vault.grant_info(user).connected
    vault.google.control.clear_faults()
    vault.google.control.arm("oauth.revoke", 503, count=2)
    reply = vault.stub("auth-gateway").RevokeGrant(vault_pb2.RevokeGrantRequest(reason="user_disconnected"),
                                                   metadata=call_metadata(user), timeout=30)
    assert reply.revoked
    assert not vault.grant_info(user).connected
    assert all(g["revoked"] for g in vault.google.oauth.grants_snapshot() if g["email"] == email)
    assert vault.db.rows("SELECT count(*) FROM vault.data_keys WHERE user_id = %s", user) == [(0,)]
    actions = vault.db.rows("SELECT action, outcome FROM vault.audit WHERE user_id = %s AND action = 'revoked' "
                            "ORDER BY id", user)
    assert actions == [("revoked", "failed"), ("revoked", "ok")]
    assert "gmail.disconnected" in _outbox_types(vault, user)


def test_a_revoke_answered_400_already_revoked_counts_as_done(vault):
    user, email = new_user("revoked400")
    vault.connect(user, email)
    vault.google.oauth.revoke_grants(email=email)
    reply = vault.stub("auth-gateway").RevokeGrant(vault_pb2.RevokeGrantRequest(reason="user_disconnected"),
                                                   metadata=call_metadata(user), timeout=30)
    assert reply.revoked
    assert not vault.grant_info(user).connected
    detail = vault.db.rows("SELECT detail FROM vault.audit WHERE user_id = %s AND action = 'revoked'", user)
    assert detail == [("user_disconnected; already revoked",)]


# -- nonces, export ----------------------------------------------------------------------------------

def test_a_state_nonce_is_fresh_once_across_processes(vault):
    user, _ = new_user("nonce")
    expires = Timestamp()
    expires.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10))
    request = vault_pb2.ConsumeStateNonceRequest(nonce="nonce-" + user, expires_at=expires)
    answers = [vault.stub("auth-gateway", p).ConsumeStateNonce(request, metadata=call_metadata(user), timeout=10).fresh
               for p in (vault.processes[0], vault.processes[1], vault.processes[0])]
    assert answers == [True, False, False]


def test_export_lists_the_connection_and_the_audit_trail_without_a_token(vault):
    user, email = new_user("export")
    vault.connect(user, email)
    token = vault.access_token(user).access_token
    records = list(vault.stub("accounts").ExportData(export_pb2.ExportRequest(), metadata=call_metadata(user),
                                                     timeout=10))
    sections = [r.section for r in records]
    assert sections[0] == "gmail_connection" and "vault_audit" in sections
    connection = json.loads(records[0].json)
    assert connection["email"] == email and connection["status"] == "connected" and connection["connected_at"]
    actions = {json.loads(r.json)["action"] for r in records if r.section == "vault_audit"}
    assert {"grant_stored", "token_issued"} <= actions
    assert not any(token in r.json for r in records)
