"""Exactly the four scopes, end to end: a Google consent that grants more or fewer than gmail.send,
gmail.compose, gmail.metadata and userinfo.email is refused, revoked at Google at once, and nothing of it
is stored; the user lands back on the app with the reason."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import psycopg
import requests

COOKIE = "cp_gmail_oauth"
APP_URL = "http://localhost:3000"
G = "https://www.googleapis.com/auth/"
FOUR = ["gmail.send", "gmail.compose", "gmail.metadata", "userinfo.email"]


def _with_scope(url: str, extra: str) -> str:
    """The consent URL as a tampering page script (or the user) would edit it: one more scope."""
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query["scope"] += " " + extra
    return urlunsplit(parts._replace(query=urlencode(query)))


def _consent(stack, session, email: str, granted: list[str], extra_scope: str | None = None) -> dict[str, list[str]]:
    """Connect, let the sandbox's consent screen grant ``granted``, follow the callback; the app's query."""
    started = session.post("/v1/gmail/connect")
    assert started.status_code == 200, started.text
    url = started.json()["authorization_url"]
    assert "include_granted_scopes" not in parse_qs(urlsplit(url).query)
    if extra_scope:
        url = _with_scope(url, extra_scope)
    requests.post(f"{stack.google}/_sandbox/consent", json={"email": email, "scopes": granted},
                  timeout=10).raise_for_status()
    google = requests.get(url, allow_redirects=False, timeout=10)
    assert google.status_code == 302, google.text
    back = session.get(google.headers["Location"], cookies={COOKIE: started.cookies[COOKIE]}, allow_redirects=False)
    assert back.status_code == 302, back.text
    assert back.headers["Location"].startswith(APP_URL + "?"), back.headers["Location"]
    return parse_qs(urlsplit(back.headers["Location"]).query)


def _grants_at_google(stack, email: str) -> list[dict]:
    grants = requests.get(f"{stack.google}/_sandbox/grants", timeout=10).json()
    return [g for g in (grants.get("grants", grants) if isinstance(grants, dict) else grants) if g["email"] == email]


def _stored(stack, user: str) -> int:
    with psycopg.connect(stack.database.admin_url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM vault.grants WHERE user_id = %s", (user,)).fetchone()[0]


def _user(tag: str) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return f"user_e2e_{tag}_{suffix}", f"{tag}-{suffix}@example.com"


def test_a_consent_with_a_fifth_scope_is_refused_revoked_at_google_and_stores_nothing(stack):
    user, email = _user("fifth")
    session = stack.session(user)
    outcome = _consent(stack, session, email, [*FOUR, "gmail.readonly"], extra_scope=G + "gmail.readonly")
    assert outcome == {"gmail": ["error"], "reason": ["excess_scope:gmail.readonly"]}
    google = _grants_at_google(stack, email)
    assert google and all(g["revoked"] for g in google)
    assert G + "gmail.readonly" in google[0]["scopes"]  # Google really granted it; we gave it back at once
    assert _stored(stack, user) == 0
    assert session.get("/v1/me").json()["gmail"] == {"connected": False}


def test_a_consent_with_only_three_scopes_is_refused_revoked_at_google_and_stores_nothing(stack):
    user, email = _user("three")
    session = stack.session(user)
    outcome = _consent(stack, session, email, ["gmail.send", "gmail.metadata", "userinfo.email"])
    assert outcome == {"gmail": ["error"], "reason": ["missing_scope:gmail.compose"]}
    google = _grants_at_google(stack, email)
    assert google and all(g["revoked"] for g in google)
    assert _stored(stack, user) == 0
    assert session.get("/v1/me").json()["gmail"] == {"connected": False}


def test_a_connected_user_whose_reconsent_adds_a_scope_is_told_to_reconnect(stack):
    user, email = _user("reconsent")
    session = stack.session(user)
    assert _consent(stack, session, email, FOUR) == {"gmail": ["connected"]}
    outcome = _consent(stack, session, email, [*FOUR, "gmail.modify"], extra_scope=G + "gmail.modify")
    assert outcome == {"gmail": ["error"], "reason": ["excess_scope:gmail.modify"]}
    # Google ended the account's whole grant with the refused one: the app shows it at once.
    assert all(g["revoked"] for g in _grants_at_google(stack, email))
    gmail = session.get("/v1/me").json()["gmail"]
    assert gmail["status"] == "needs_reconnect" and G + "gmail.modify" not in gmail["scopes"]
    assert _consent(stack, session, email, FOUR) == {"gmail": ["connected"]}
