"""The vault's part of the access log: every access token handed out (from memory, from storage or
refreshed, by either process) is an entry naming the caller, the token's scopes and its expiry; the
gateway alone may list them; and token issues past the retention period are expired, nothing else."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest

from bench.vault_harness import new_user
from coffeeping.common.db import make_engine
from coffeeping.common.rpc import call_metadata
from coffeeping.types.v1 import access_pb2
from coffeeping_vault.audit import AuditWriter

METADATA = "https://www.googleapis.com/auth/gmail.metadata"


def _issues(vault, user: str, **request) -> list[access_pb2.AccessEntry]:
    vault.settle()  # issue records are written in batches
    reply = vault.stub("auth-gateway").ListAccessEntries(access_pb2.ListAccessEntriesRequest(**request),
                                                         metadata=call_metadata(user), timeout=10)
    return list(reply.entries)


def test_every_token_handed_out_is_an_entry_with_its_caller_scopes_and_expiry(vault):
    user, email = new_user("issues")
    vault.connect(user, email)
    full = vault.access_token(user)
    metadata = vault.access_token(user, "reply-watcher", process=vault.processes[1], scopes=(METADATA,))
    vault.access_token(user)  # again, from memory
    entries = _issues(vault, user)
    assert [(e.caller, list(e.scopes)) for e in entries] == [
        ("mailer", sorted(s.rsplit("/", 1)[-1] for s in full.scopes)), ("reply-watcher", ["gmail.metadata"]),
        ("mailer", sorted(s.rsplit("/", 1)[-1] for s in full.scopes))][::-1]
    assert {e.kind for e in entries} == {"token_issued"} and {e.method for e in entries} == {"TokenVault.GetAccessToken"}
    watcher = entries[1]
    assert watcher.expires_at.ToDatetime(tzinfo=dt.UTC) == metadata.expires_at.ToDatetime(tzinfo=dt.UTC)
    assert watcher.description == ("Token vault gave the reply watcher an access token for gmail.metadata, valid until "
                                   + metadata.expires_at.ToDatetime().strftime("%Y-%m-%d %H:%M UTC"))
    assert not any(full.access_token in str(e) for e in entries)
    assert _issues(vault, user, filter=access_pb2.AccessFilter(kind="metadata_read")) == []
    counts = vault.stub("auth-gateway").SummarizeAccess(access_pb2.SummarizeAccessRequest(),
                                                        metadata=call_metadata(user), timeout=10).counts
    assert [(c.kind, c.calls) for c in counts] == [("token_issued", 3)]


def test_only_the_gateway_may_list_a_users_token_issues(vault):
    user, email = new_user("issuelist")
    vault.connect(user, email)
    for caller in ("mailer", "reply-watcher", "accounts"):
        with pytest.raises(grpc.RpcError) as refused:
            vault.stub(caller).ListAccessEntries(access_pb2.ListAccessEntriesRequest(), metadata=call_metadata(user),
                                                 timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_token_issues_past_the_retention_period_expire_and_the_rest_of_the_trail_stays(vault):
    user, email = new_user("retention")
    vault.connect(user, email)
    vault.access_token(user)
    vault.settle()
    vault.db.execute("UPDATE vault.audit SET at = at - interval '401 days' WHERE user_id = %s", user)
    vault.access_token(user, "reply-watcher", scopes=(METADATA,))
    vault.settle()
    engine = make_engine(vault.db.app_url, pool_size=1)
    try:
        assert AuditWriter(engine, retention_days=400).expire() >= 1  # the vault's hourly sweep
    finally:
        engine.dispose()
    old = [a for (a,) in vault.db.rows("SELECT action FROM vault.audit WHERE user_id = %s AND at < now() - "
                                       "interval '400 days'", user)]
    assert "grant_stored" in old and "token_issued" not in old and "token_refreshed" not in old
    assert [e.caller for e in _issues(vault, user)] == ["reply-watcher"]
