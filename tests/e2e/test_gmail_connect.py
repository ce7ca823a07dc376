"""Connecting Gmail end to end through the public API, against the sandbox's Google, with the
system started as a user starts it."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

import requests

COOKIE = "cp_gmail_oauth"


def _email(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@example.com"


def _consent_and_follow(stack, session, email: str, **consent) -> tuple[str, str, str]:
    """POST /v1/gmail/connect, then let the sandbox's consent screen answer; return the callback URL,
    the browser-binding cookie and the authorization URL."""
    reply = session.post("/v1/gmail/connect")
    assert reply.status_code == 200, reply.text
    authorization_url = reply.json()["authorization_url"]
    cookie = reply.cookies.get(COOKIE)
    assert cookie
    requests.post(f"{stack.google}/_sandbox/consent", json={"email": email, **consent}, timeout=10).raise_for_status()
    google = requests.get(authorization_url, allow_redirects=False, timeout=10)
    assert google.status_code == 302, google.text
    return google.headers["Location"], cookie, authorization_url


def _outcome(reply: requests.Response) -> dict[str, list[str]]:
    assert reply.status_code == 302, reply.text
    location = reply.headers["Location"]
    assert location.startswith("http://localhost:3000"), location
    return parse_qs(urlsplit(location).query)


def _connect(stack, session, email: str, **consent) -> dict[str, list[str]]:
    callback, cookie, _ = _consent_and_follow(stack, session, email, **consent)
    return _outcome(session.get(callback, cookies={COOKIE: cookie}, allow_redirects=False))


def test_a_user_connects_gmail_and_me_shows_the_account_and_scopes(stack):
    user = f"user_e2e_gmail_{uuid.uuid4().hex[:8]}"
    session = stack.session(user)
    email = _email("connect")
    assert session.get("/v1/me").json()["gmail"] == {"connected": False}

    callback, cookie, authorization_url = _consent_and_follow(stack, session, email)
    query = parse_qs(urlsplit(authorization_url).query)
    assert query["scope"] == [" ".join([
        "https://www.googleapis.com/auth/gmail.send", "https://www.googleapis.com/auth/gmail.compose",
        "https://www.googleapis.com/auth/gmail.metadata", "https://www.googleapis.com/auth/userinfo.email"])]
    assert query["access_type"] == ["offline"] and "include_granted_scopes" not in query
    assert query["prompt"] == ["consent"] and query["code_challenge_method"] == ["S256"]
    assert "code_verifier" not in authorization_url and "code_verifier" not in callback

    assert _outcome(session.get(callback, cookies={COOKIE: cookie}, allow_redirects=False)) == {"gmail": ["connected"]}
    gmail = session.get("/v1/me").json()["gmail"]
    assert gmail["connected"] is True and gmail["status"] == "connected"
    assert gmail["email"] == email
    assert "https://www.googleapis.com/auth/gmail.send" in gmail["scopes"]


def test_reconnecting_asks_no_consent_prompt_and_keeps_the_held_refresh_token(stack):
    user = f"user_e2e_regmail_{uuid.uuid4().hex[:8]}"
    session = stack.session(user)
    email = _email("reconnect")
    assert _connect(stack, session, email) == {"gmail": ["connected"]}
    callback, cookie, authorization_url = _consent_and_follow(stack, session, email)
    assert "prompt" not in parse_qs(urlsplit(authorization_url).query)
    assert _outcome(session.get(callback, cookies={COOKIE: cookie}, allow_redirects=False)) == {"gmail": ["connected"]}
    grants = requests.get(f"{stack.google}/_sandbox/grants", timeout=10).json()
    mine = [g for g in (grants.get("grants", grants) if isinstance(grants, dict) else grants) if g["email"] == email]
    assert mine and sum(1 for t in mine[0]["refresh_tokens"] if t["live"]) == 1


def test_an_unticked_scope_is_not_a_connection_and_says_which(stack):
    session = stack.session(f"user_e2e_untick_{uuid.uuid4().hex[:8]}")
    outcome = _connect(stack, session, _email("untick"), untick=["gmail.send"])
    assert outcome == {"gmail": ["error"], "reason": ["missing_scope:gmail.send"]}
    assert session.get("/v1/me").json()["gmail"] == {"connected": False}


def test_declining_consent_comes_back_as_access_denied(stack):
    session = stack.session(f"user_e2e_deny_{uuid.uuid4().hex[:8]}")
    outcome = _connect(stack, session, _email("deny"), deny=True)
    assert outcome == {"gmail": ["error"], "reason": ["access_denied"]}
    assert session.get("/v1/me").json()["gmail"] == {"connected": False}


def test_disconnecting_revokes_at_google_and_forgets_the_grant(stack):
    session = stack.session(f"user_e2e_disc_{uuid.uuid4().hex[:8]}")
    email = _email("disconnect")
    assert _connect(stack, session, email) == {"gmail": ["connected"]}
    reply = session.delete("/v1/gmail")
    assert reply.status_code == 204, reply.text
    assert session.get("/v1/me").json()["gmail"] == {"connected": False}
    grants = requests.get(f"{stack.google}/_sandbox/grants", timeout=10).json()
    mine = [g for g in (grants.get("grants", grants) if isinstance(grants, dict) else grants) if g["email"] == email]
    assert mine and all(g["revoked"] for g in mine)
    assert session.delete("/v1/gmail").status_code == 204
