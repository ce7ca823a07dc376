"""Zero trust inside the vault: each calling service gets exactly the scopes and methods its own code
uses, over real mTLS gRPC with that service's certificate; and a consent is stored only when Google
granted exactly the four scopes (anything more is revoked at Google at once)."""

from __future__ import annotations

import grpc
import pytest

from bench.vault_harness import SCOPES, new_user
from coffeeping.common.rpc import call_metadata
from coffeeping.types.v1 import export_pb2
from coffeeping.vault.v1 import vault_pb2

G = "https://www.googleapis.com/auth/"
SEND, COMPOSE, METADATA, USERINFO = (G + s for s in ("gmail.send", "gmail.compose", "gmail.metadata",
                                                     "userinfo.email"))
READONLY, MODIFY, FULL_MAIL = G + "gmail.readonly", G + "gmail.modify", "https://mail.google.com/"

# What each service's code asks for (mailer: gmail_api.Gmail; watcher: poller.Poller) and nothing else.
WATCHER_REFUSED = [(), (SEND,), (COMPOSE,), (METADATA, SEND), (COMPOSE, METADATA), (SEND, COMPOSE, METADATA, USERINFO),
                   (READONLY,), (MODIFY,), (FULL_MAIL,), (USERINFO,)]
MAILER_REFUSED = [(METADATA,), (SEND,), (SEND, COMPOSE), (COMPOSE, METADATA), (SEND, COMPOSE, METADATA, USERINFO),
                  (READONLY,), (MODIFY,), (FULL_MAIL,)]


def _refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value


def _denied(call) -> None:
    error = _refused(call)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (error.code(), error.details())


def _issued(vault, user: str) -> list[tuple[str, str, str]]:
    vault.settle()  # issue records are written in batches
    return vault.db.rows("SELECT caller, outcome, detail FROM vault.audit WHERE user_id = %s "
                         "AND action = 'token_issued' ORDER BY id", user)


def _held(vault, user: str) -> int:
    return vault.db.rows("SELECT count(*) FROM vault.grants WHERE user_id = %s", user)[0][0]


def _at_google(vault, email: str) -> list[dict]:
    return [g for g in vault.google.oauth.grants_snapshot() if g["email"] == email]


# -- access tokens: per caller, exact scope sets ----------------------------------------------------------

def test_the_reply_watcher_gets_exactly_gmail_metadata_and_nothing_else(vault):
    user, email = new_user("watchscope")
    vault.connect(user, email)
    token = vault.access_token(user, "reply-watcher", scopes=(METADATA,))
    assert list(token.scopes) == [METADATA]
    assert vault.google.oauth.token_info(token.access_token).scopes == {METADATA}  # as Google sees it
    refreshes = vault.google.oauth.refresh_count(email)
    for scopes in WATCHER_REFUSED:
        for process in vault.processes:
            _denied(lambda s=scopes, p=process: vault.access_token(user, "reply-watcher", p, scopes=s))
    # Refused before anything was read or asked of Google; only the one metadata token was ever issued.
    assert vault.google.oauth.refresh_count(email) == refreshes
    assert _issued(vault, user) == [("reply-watcher", "ok", "scopes=gmail.metadata")]


def test_the_mailer_gets_the_grant_or_a_compose_only_token_and_nothing_else(vault):
    user, email = new_user("mailscope")
    vault.connect(user, email)
    grant = vault.access_token(user, "mailer")
    assert set(grant.scopes) == set(SCOPES)
    compose = vault.access_token(user, "mailer", scopes=(COMPOSE,))
    assert vault.google.oauth.token_info(compose.access_token).scopes == {COMPOSE}
    refreshes = vault.google.oauth.refresh_count(email)
    for scopes in MAILER_REFUSED:
        _denied(lambda s=scopes: vault.access_token(user, "mailer", scopes=s))
    assert vault.google.oauth.refresh_count(email) == refreshes
    assert [(c, o) for c, o, _ in _issued(vault, user)] == [("mailer", "ok"), ("mailer", "ok")]


def test_a_refused_scope_set_reveals_nothing_about_the_user(vault):
    # The same answer whether the user is connected or unknown: a caller learns nothing by asking for more.
    connected, email = new_user("probe")
    vault.connect(connected, email)
    unknown, _ = new_user("probeunknown")
    for user in (connected, unknown):
        _denied(lambda u=user: vault.access_token(u, "reply-watcher", scopes=(SEND,)))
        _denied(lambda u=user: vault.access_token(u, "reply-watcher"))
    assert vault.db.rows("SELECT count(*) FROM vault.audit WHERE user_id = %s", unknown) == [(0,)]


# -- methods: only the ones each caller uses ------------------------------------------------------------

def test_accounts_may_export_and_nothing_else(vault):
    user, email = new_user("acctonly")
    vault.connect(user, email)
    accounts = vault.stub("accounts")
    records = list(accounts.ExportData(export_pb2.ExportRequest(), metadata=call_metadata(user), timeout=30))
    assert records and records[0].section == "gmail_connection"
    _denied(lambda: accounts.GetGrantInfo(vault_pb2.GetGrantInfoRequest(), metadata=call_metadata(user), timeout=10))
    for reason in ("account_deleted", "user_disconnected"):
        _denied(lambda r=reason: accounts.RevokeGrant(vault_pb2.RevokeGrantRequest(reason=r),
                                                      metadata=call_metadata(user), timeout=10))
    _denied(lambda: vault.access_token(user, "accounts", scopes=(METADATA,)))
    # Nothing was revoked: the grant is held and alive at Google.
    assert vault.grant_info(user).connected
    assert _at_google(vault, email) and not any(g["revoked"] for g in _at_google(vault, email))


def test_the_mailer_and_the_watcher_neither_describe_revoke_nor_export_a_grant(vault):
    user, email = new_user("noinfo")
    vault.connect(user, email)
    for caller in ("mailer", "reply-watcher"):
        stub = vault.stub(caller)
        _denied(lambda s=stub: s.GetGrantInfo(vault_pb2.GetGrantInfoRequest(), metadata=call_metadata(user),
                                              timeout=10))
        _denied(lambda s=stub: s.RevokeGrant(vault_pb2.RevokeGrantRequest(reason="user_disconnected"),
                                             metadata=call_metadata(user), timeout=10))
        _denied(lambda s=stub: list(s.ExportData(export_pb2.ExportRequest(), metadata=call_metadata(user),
                                                 timeout=10)))
    _denied(lambda: list(vault.stub("auth-gateway").ExportData(export_pb2.ExportRequest(),
                                                                metadata=call_metadata(user), timeout=10)))
    assert vault.grant_info(user).connected


# -- consents: exactly the four scopes -------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "reason"), [
    ((READONLY,), "excess_scope:gmail.readonly"),
    ((FULL_MAIL, MODIFY), "excess_scope:gmail.modify,mail.google.com"),
    ((G + "userinfo.profile",), "excess_scope:userinfo.profile"),
])
def test_a_consent_with_more_than_the_four_scopes_is_refused_revoked_and_stores_nothing(vault, extra, reason):
    user, email = new_user("excess")
    error = _refused(lambda: vault.connect(user, email, scopes=(*SCOPES, *extra)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and error.details() == reason
    assert _held(vault, user) == 0
    assert vault.db.rows("SELECT count(*) FROM vault.data_keys WHERE user_id = %s", user) == [(0,)]
    google = _at_google(vault, email)
    assert google and all(g["revoked"] for g in google)  # no grant left at Google either
    assert vault.db.rows("SELECT outcome, detail FROM vault.audit WHERE user_id = %s AND action = 'connect'",
                         user) == [("failed", reason)]


def test_a_consent_with_only_three_scopes_is_refused_revoked_and_stores_nothing(vault):
    user, email = new_user("three")
    error = _refused(lambda: vault.connect(user, email, scopes=(SEND, METADATA, USERINFO)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and error.details() == "missing_scope:gmail.compose"
    assert _held(vault, user) == 0
    assert all(g["revoked"] for g in _at_google(vault, email))


def test_openid_beside_userinfo_email_is_not_a_fifth_scope_but_never_replaces_it(vault):
    # Google adds ``openid`` by itself to a consent for userinfo.email; it reaches nothing more.
    user, email = new_user("openid")
    info = vault.connect(user, email, scopes=(*SCOPES, "openid"))
    assert info.connected and set(info.scopes) == {*SCOPES, "openid"}
    other, other_email = new_user("openidonly")
    error = _refused(lambda: vault.connect(other, other_email, scopes=(SEND, COMPOSE, METADATA, "openid")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "excess_scope:openid"
    assert _held(vault, other) == 0 and all(g["revoked"] for g in _at_google(vault, other_email))


def test_a_reconsent_with_a_fifth_scope_ends_the_held_grant_of_that_account_and_says_so(vault):
    user, email = new_user("reexcess")
    vault.connect(user, email)
    assert vault.access_token(user, "mailer").access_token
    error = _refused(lambda: vault.connect(user, email, scopes=(*SCOPES, READONLY)))
    assert error.details() == "excess_scope:gmail.readonly"
    # Revoking the new grant ended the account's whole grant at Google, the held one included: the vault
    # says so at once instead of serving a dead token until the next refresh.
    assert all(g["revoked"] for g in _at_google(vault, email))
    info = vault.grant_info(user)
    assert info.connected and info.status == "needs_reconnect" and READONLY not in info.scopes
    vault.settle()
    assert _refused(lambda: vault.access_token(user, "mailer")).code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "gmail.disconnected" in [r[0] for r in vault.db.rows(
        "SELECT routing_key FROM vault.outbox WHERE user_id = %s", user)]
    # A proper consent connects again.
    assert vault.connect(user, email).status == "connected"
    assert vault.access_token(user, "mailer").access_token


def test_a_fifth_scope_from_another_google_account_leaves_the_held_grant_alone(vault):
    user, email = new_user("otherexcess")
    _, other_email = new_user("otheraccount")
    vault.connect(user, email)
    error = _refused(lambda: vault.connect(user, other_email, scopes=(*SCOPES, READONLY)))
    assert error.details() == "excess_scope:gmail.readonly"
    assert all(g["revoked"] for g in _at_google(vault, other_email))
    assert not any(g["revoked"] for g in _at_google(vault, email))
    assert vault.grant_info(user).status == "connected"
    assert vault.access_token(user, "mailer").email == email
