"""Access tokens for a subset of a grant's scopes, the in-memory token cache and the batched audit
trail, tested against real vault processes, PostgreSQL and the sandbox's Google OAuth."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from bench.vault_harness import new_user
from coffeeping.common.rpc import call_metadata
from coffeeping.vault.v1 import vault_pb2

G = "https://www.googleapis.com/auth/"
COMPOSE, METADATA = G + "gmail.compose", G + "gmail.metadata"


def _wait(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def _issued(vault, user: str) -> int:
    return vault.db.rows("SELECT count(*) FROM vault.audit WHERE user_id = %s AND action = 'token_issued' "
                         "AND outcome = 'ok'", user)[0][0]


def test_a_token_asked_for_a_subset_of_the_grant_holds_exactly_that_subset(vault):
    user, email = new_user("subset")
    vault.connect(user, email)
    full = vault.access_token(user)
    compose = vault.access_token(user, scopes=(COMPOSE,))
    metadata = vault.access_token(user, "reply-watcher", scopes=(METADATA,))
    assert list(compose.scopes) == [COMPOSE] and list(metadata.scopes) == [METADATA]
    assert compose.email == email
    assert vault.google.oauth.token_info(compose.access_token).scopes == {COMPOSE}
    assert vault.google.oauth.token_info(metadata.access_token).scopes == {METADATA}
    assert METADATA in vault.google.oauth.token_info(full.access_token).scopes
    assert len({full.access_token, compose.access_token, metadata.access_token}) == 3
    refresh = [e for e in vault.google.control.log("oauth.token") if e.get("grant_type") == "refresh_token"]
    assert refresh  # the narrowing went through the refresh-token grant's ``scope`` parameter


def test_a_scope_outside_the_grant_is_refused_and_recorded(vault):
    user, email = new_user("ungranted")
    vault.connect(user, email)
    # No consent without gmail.compose is stored any more; a grant recorded without it (its scopes are
    # metadata in clear) still never yields a compose token.
    vault.db.execute("UPDATE vault.grants SET scopes = array_remove(scopes, %s) WHERE user_id = %s", COMPOSE, user)
    vault.settle()
    with pytest.raises(grpc.RpcError) as refused:
        vault.access_token(user, scopes=(COMPOSE,))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details() == "scope_not_granted:gmail.compose"
    assert vault.google.oauth.refresh_count(email) == 0
    assert vault.db.rows("SELECT outcome, detail FROM vault.audit WHERE user_id = %s AND action = 'token_issued'",
                         user) == [("refused", "scope_not_granted:gmail.compose")]
    for bad in (("",), tuple(f"{G}x{i}" for i in range(40)), (COMPOSE + " " + METADATA,)):
        with pytest.raises(grpc.RpcError) as malformed:
            vault.access_token(user, scopes=bad)
        assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_scoped_tokens_are_kept_per_scope_set_encrypted_and_shared_by_both_processes(vault):
    user, email = new_user("perset")
    vault.connect(user, email)
    first = vault.access_token(user, scopes=(COMPOSE,), process=vault.processes[0])
    again = vault.access_token(user, scopes=(COMPOSE,), process=vault.processes[1])
    other = vault.access_token(user, "reply-watcher", scopes=(METADATA,), process=vault.processes[1])
    assert first.access_token == again.access_token != other.access_token
    assert vault.google.oauth.refresh_count(email) == 2  # one per scope set, none for the second process
    rows = vault.db.rows("SELECT scope_key, access_ct FROM vault.scoped_tokens WHERE user_id = %s ORDER BY 1", user)
    assert [r[0] for r in rows] == [COMPOSE, METADATA]
    for _key, sealed in rows:
        assert first.access_token.encode() not in bytes(sealed) and other.access_token.encode() not in bytes(sealed)
    # A scoped ciphertext moved to another scope set's row fails closed.
    vault.db.execute("UPDATE vault.scoped_tokens SET access_ct = (SELECT access_ct FROM vault.scoped_tokens "
                     "WHERE user_id = %s AND scope_key = %s) WHERE user_id = %s AND scope_key <> %s",
                     user, COMPOSE, user, COMPOSE)
    vault.settle()
    with pytest.raises(grpc.RpcError) as refused:
        vault.access_token(user, "reply-watcher", scopes=(METADATA,), process=vault.processes[0])
    assert refused.value.code() == grpc.StatusCode.DATA_LOSS


def test_concurrent_requests_for_an_expired_scoped_token_refresh_once_across_two_processes(vault):
    user, email = new_user("scopedherd")
    vault.connect(user, email)
    old = vault.access_token(user, scopes=(COMPOSE,)).access_token
    full = vault.access_token(user).access_token
    vault.expire(user)
    before = vault.google.oauth.refresh_count(email)
    with ThreadPoolExecutor(max_workers=60) as pool:
        tokens = list(pool.map(lambda i: vault.access_token(user, process=vault.processes[i % 2],
                                                            scopes=(COMPOSE,)).access_token, range(120)))
    assert vault.google.oauth.refresh_count(email) - before == 1
    assert len(set(tokens)) == 1 and tokens[0] not in (old, full)
    assert vault.google.oauth.token_info(tokens[0]).scopes == {COMPOSE}


def test_a_revoke_in_one_process_stops_the_other_serving_its_cached_token(vault):
    user, email = new_user("xrevoke")
    vault.connect(user, email)
    for _ in range(3):  # now in the second process's memory, for both scope sets
        vault.access_token(user, process=vault.processes[1])
        vault.access_token(user, scopes=(COMPOSE,), process=vault.processes[1])
    vault.stub("auth-gateway", vault.processes[0]).RevokeGrant(
        vault_pb2.RevokeGrantRequest(reason="user_disconnected"), metadata=call_metadata(user), timeout=30)

    def refused(scopes: tuple[str, ...]) -> bool:
        try:
            vault.access_token(user, scopes=scopes, process=vault.processes[1])
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.NOT_FOUND
        return False

    assert _wait(lambda: refused(()) and refused((COMPOSE,)))


def test_a_grant_marked_needs_reconnect_elsewhere_stops_tokens_served_from_memory(vault):
    user, email = new_user("xreconnect")
    vault.connect(user, email)
    vault.access_token(user, process=vault.processes[1])
    vault.db.execute("UPDATE vault.grants SET status = 'needs_reconnect' WHERE user_id = %s", user)
    vault.settle()
    with pytest.raises(grpc.RpcError) as refused:
        vault.access_token(user, process=vault.processes[1])
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_every_token_handed_out_from_memory_is_recorded(vault):
    user, email = new_user("recorded")
    vault.connect(user, email)
    for process in vault.processes:
        vault.access_token(user, process=process)
        vault.access_token(user, "reply-watcher", process=process, scopes=(METADATA,))
    counted = _wait(lambda: _issued(vault, user) == 4 and _issued(vault, user))
    assert counted == 4
    for i in range(100):
        watcher = i % 3 == 0
        vault.access_token(user, "reply-watcher" if watcher else "mailer", process=vault.processes[i % 2],
                           scopes=(METADATA,) if watcher else ())
    assert _wait(lambda: _issued(vault, user) == 104), _issued(vault, user)
    callers = dict(vault.db.rows("SELECT caller, count(*) FROM vault.audit WHERE user_id = %s "
                                 "AND action = 'token_issued' GROUP BY caller", user))
    assert callers == {"mailer": 2 + 66, "reply-watcher": 2 + 34}
    scoped = vault.db.rows("SELECT count(*) FROM vault.audit WHERE user_id = %s AND action = 'token_issued' "
                           "AND detail = 'scopes=gmail.metadata'", user)[0][0]
    assert scoped == 2 + sum(1 for i in range(100) if i % 3 == 0)


def test_queued_issue_records_are_written_when_the_vault_stops(vault):
    user, email = new_user("shutdown")
    vault.connect(user, email)
    process = vault.start(TOKEN_VAULT_AUDIT_FLUSH_S="600")  # only the shutdown flush can write them
    try:
        for _ in range(25):
            vault.access_token(user, process=process)
        assert _issued(vault, user) <= 1  # the first one may be written before the writer started
    finally:
        vault.processes.remove(process)
        process.stop()
    assert _issued(vault, user) == 25
