"""The Gmail connection flow at the gateway: the consent URL, the browser-binding cookie, and every
refusal of the callback (each with nothing stored), through the running system and the sandbox."""

from __future__ import annotations

import time
import uuid
from urllib.parse import parse_qs, urlencode, urlsplit

import requests

from coffeeping_gateway.oauth_state import COOKIE_NAME, InvalidState, StateSigner

APP_URL = "http://localhost:3000"


def _user(tag: str) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return f"user_gw_{tag}_{suffix}", f"gw-{tag}-{suffix}@example.com"


def _start(stack, session, email: str) -> tuple[str, str]:
    """Connect and pass the consent screen; return (callback URL from Google, cookie)."""
    reply = session.post("/v1/gmail/connect")
    assert reply.status_code == 200, reply.text
    requests.post(f"{stack.google}/_sandbox/consent", json={"email": email}, timeout=10).raise_for_status()
    google = requests.get(reply.json()["authorization_url"], allow_redirects=False, timeout=10)
    assert google.status_code == 302
    return google.headers["Location"], reply.cookies[COOKIE_NAME]


def _params(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def _callback(stack, session, params: dict[str, str], cookie: str | None) -> dict[str, str]:
    cookies = {COOKIE_NAME: cookie} if cookie else {}
    reply = session.get(f"/v1/gmail/callback?{urlencode(params)}", cookies=cookies, allow_redirects=False)
    assert reply.status_code == 302, reply.text
    location = reply.headers["Location"]
    assert location.startswith(APP_URL + "?"), location
    return _params(location)


def _connected(session) -> bool:
    return bool(session.get("/v1/me").json()["gmail"]["connected"])


def _secret(stack) -> str:
    return stack.config.env("auth-gateway")["OAUTH_STATE_SECRET"]


def test_connect_sets_an_httponly_secure_lax_cookie_and_keeps_the_verifier_out_of_urls(stack):
    user, _ = _user("cookie")
    reply = stack.session(user).post("/v1/gmail/connect")
    assert reply.status_code == 200
    header = reply.headers["Set-Cookie"]
    assert f"{COOKIE_NAME}=" in header
    for attribute in ("HttpOnly", "Secure", "SameSite=Lax", "Path=/v1/gmail/callback", "Max-Age=600"):
        assert attribute in header
    url = reply.json()["authorization_url"]
    params = _params(url)
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert "code_verifier" not in url
    # Exactly the four scopes, and no earlier grant's scopes folded in by Google.
    assert params["scope"].split() == [f"https://www.googleapis.com/auth/{s}" for s in (
        "gmail.send", "gmail.compose", "gmail.metadata", "userinfo.email")]
    assert "include_granted_scopes" not in params
    assert reply.headers["Cache-Control"] == "no-store"


def test_a_tampered_state_is_refused_and_nothing_is_stored(stack):
    user, email = _user("tamper")
    session = stack.session(user)
    callback, cookie = _start(stack, session, email)
    params = _params(callback)
    body, signature = params["state"].split(".")
    for forged in (body + "." + signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB"),
                   body[:-1] + ("x" if body[-1] != "x" else "y") + "." + signature, "garbage", ""):
        assert _callback(stack, session, {**params, "state": forged}, cookie) == {
            "gmail": "error", "reason": "invalid_state"}
    assert not _connected(session)
    # The untouched state still works once: the refusals consumed nothing.
    assert _callback(stack, session, params, cookie) == {"gmail": "connected"}


def test_an_expired_state_is_refused(stack):
    user, email = _user("expired")
    session = stack.session(user)
    callback, _ = _start(stack, session, email)
    stale = StateSigner(_secret(stack)).begin(user, now=time.time() - 601)
    outcome = _callback(stack, session, {**_params(callback), "state": stale.state}, stale.cookie)
    assert outcome == {"gmail": "error", "reason": "invalid_state"}
    assert not _connected(session)


def test_a_replayed_state_is_refused(stack):
    user, email = _user("replay")
    session = stack.session(user)
    callback, cookie = _start(stack, session, email)
    params = _params(callback)
    assert _callback(stack, session, {"state": params["state"], "error": "access_denied"}, cookie) == {
        "gmail": "error", "reason": "access_denied"}
    assert _callback(stack, session, params, cookie) == {"gmail": "error", "reason": "invalid_state"}
    assert not _connected(session)


def test_a_state_from_another_browser_is_refused(stack):
    user, email = _user("browser")
    session = stack.session(user)
    callback, cookie = _start(stack, session, email)
    other_cookie = session.post("/v1/gmail/connect").cookies[COOKIE_NAME]
    params = _params(callback)
    assert _callback(stack, session, params, None)["reason"] == "invalid_state"
    assert _callback(stack, session, params, other_cookie)["reason"] == "invalid_state"
    assert _callback(stack, session, params, cookie[:-2] + "AA")["reason"] == "invalid_state"
    assert not _connected(session)


def test_a_state_for_another_user_than_the_signed_in_one_is_refused(stack):
    victim, email = _user("victim")
    attacker, _ = _user("attacker")
    callback, cookie = _start(stack, stack.session(attacker), email)
    # The attacker's consent (code, state, cookie) lands in the victim's signed-in browser.
    outcome = _callback(stack, stack.session(victim), _params(callback), cookie)
    assert outcome == {"gmail": "error", "reason": "invalid_state"}
    assert not _connected(stack.session(victim)) and not _connected(stack.session(attacker))


def test_access_denied_and_a_missing_code_are_refused(stack):
    user, email = _user("denied")
    session = stack.session(user)
    _, cookie = _start(stack, session, email)
    for extra, reason in (({"error": "access_denied"}, "access_denied"), ({}, "missing_code")):
        pending = session.post("/v1/gmail/connect")
        state = _params(pending.json()["authorization_url"])["state"]
        outcome = _callback(stack, session, {"state": state, **extra}, pending.cookies[COOKIE_NAME])
        assert outcome == {"gmail": "error", "reason": reason}
    assert not _connected(session)


def test_the_callback_needs_a_session_and_never_redirects_elsewhere(stack):
    user, email = _user("redirect")
    session = stack.session(user)
    callback, cookie = _start(stack, session, email)
    params = {**_params(callback), "redirect_uri": "https://evil.example/", "next": "https://evil.example/",
              "return_to": "//evil.example"}
    anonymous = requests.get(f"{stack.url}/v1/gmail/callback?{urlencode(params)}", cookies={COOKIE_NAME: cookie},
                             allow_redirects=False, timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.headers["Content-Type"] == "application/problem+json"
    assert _callback(stack, session, params, cookie) == {"gmail": "connected"}


def test_state_verification_rejects_each_binding_directly():
    signer = StateSigner("s" * 48)
    pending = signer.begin("user_a")
    verified = signer.verify(pending.state, pending.cookie, "user_a")
    assert verified.nonce == pending.nonce and len(verified.code_verifier) >= 43
    refusals = [
        (pending.state, pending.cookie, "user_b"),
        (pending.state, None, "user_a"),
        (pending.state, signer.begin("user_a").cookie, "user_a"),
        (StateSigner("t" * 48).begin("user_a").state, pending.cookie, "user_a"),
        (pending.state + "x", pending.cookie, "user_a"),
    ]
    for state, cookie, user in refusals:
        try:
            signer.verify(state, cookie, user)
        except InvalidState:
            continue
        raise AssertionError("accepted a state it should refuse")
    try:
        signer.verify(pending.state, pending.cookie, "user_a", now=pending.expires_at)
    except InvalidState:
        pass
    else:
        raise AssertionError("accepted an expired state")


def test_no_code_state_or_cookie_reaches_a_log_line(stack):
    user, email = _user("logs")
    session = stack.session(user)
    callback, cookie = _start(stack, session, email)
    params = _params(callback)
    assert _callback(stack, session, params, cookie) == {"gmail": "connected"}
    # Our services' logs; the sandbox plays Google, which sees the state and code by design.
    logs = b"".join(p.read_bytes() for p in (stack.config.log_dir or stack.config.var_dir).glob("*.log")
                    if p.name != "sandbox.log")
    assert logs
    for secret in (params["code"], params["state"], cookie):
        assert secret.encode() not in logs


def test_the_vault_reasons_passed_to_the_app_are_exactly_the_known_codes():
    from coffeeping_gateway.views.gmail import known_vault_reason

    for reason in ("different_account", "account_deleted", "missing_scope:gmail.send,userinfo.email",
                   "excess_scope:gmail.readonly", "excess_scope:gmail.modify,mail.google.com"):
        assert known_vault_reason(reason) == reason
    # Anything else becomes temporarily_unavailable: a detail never reaches the app's URL unvetted.
    for detail in ("excess_scope:", "excess_scope:https://evil.example/", "scope_not_allowed", "account_deleted\n",
                   "missing_scope:gmail.send&next=https://evil.example", "needs_reconnect"):
        assert known_vault_reason(detail) is None, detail
