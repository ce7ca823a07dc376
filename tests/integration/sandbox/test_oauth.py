"""The Google OAuth stand-in behaves like Google for a web-server client, through real HTTP."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import google.auth.transport.requests
import jwt
import pytest
import requests
from google.auth.exceptions import RefreshError
from google.oauth2.credentials import Credentials

from coffeeping_sandbox.oauth import GMAIL_METADATA, GMAIL_SEND, USERINFO_EMAIL, subject_for

SCOPES = f"openid email {GMAIL_SEND}"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize(sandbox, client, *, scope=SCOPES, challenge=None, **extra):
    params = {
        "client_id": client.client_id,
        "redirect_uri": client.redirect_uri,
        "response_type": "code",
        "scope": scope,
        "state": "st-" + secrets.token_hex(8),
        **extra,
    }
    if challenge is not None:
        params.update(code_challenge=challenge, code_challenge_method="S256")
    params = {k: v for k, v in params.items() if v is not None}
    resp = requests.get(
        sandbox.google_url + "/o/oauth2/v2/auth", params=params, allow_redirects=False, timeout=5
    )
    return resp, params


def callback(resp) -> dict[str, str]:
    assert resp.status_code == 302, resp.text
    loc = urlsplit(resp.headers["Location"])
    return {k: v[0] for k, v in parse_qs(loc.query).items()}


def exchange(sandbox, client, code, verifier=None, redirect_uri=None, secret=None, auth=None):
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri or client.redirect_uri,
    }
    if auth is None:
        form.update(client_id=client.client_id, client_secret=secret or client.client_secret)
    if verifier is not None:
        form["code_verifier"] = verifier
    return requests.post(sandbox.google_url + "/token", data=form, auth=auth, timeout=5)


def connect(sandbox, client, *, scope=SCOPES, **extra):
    """A full consent + exchange with PKCE; returns the token JSON."""
    verifier, challenge = pkce()
    resp, _ = authorize(sandbox, client, scope=scope, challenge=challenge, **extra)
    resp = exchange(sandbox, client, callback(resp)["code"], verifier)
    assert resp.status_code == 200, resp.text
    return resp.json()


def refresh(sandbox, client, refresh_token, **extra):
    form = {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        **extra,
    }
    return requests.post(sandbox.google_url + "/token", data=form, timeout=5)


def revoke(sandbox, token):
    return requests.post(sandbox.google_url + "/revoke", data={"token": token}, timeout=5)


# ------------------------------------------------------------------------- authorization


def test_consent_redirects_with_code_untouched_state_and_granted_scopes(sandbox, web_client):
    resp, params = authorize(sandbox, web_client, challenge=pkce()[1], access_type="offline")
    assert resp.headers["Location"].startswith(web_client.redirect_uri + "?")
    q = callback(resp)
    assert q["state"] == params["state"]
    assert q["code"]
    assert set(q["scope"].split()) == {"openid", USERINFO_EMAIL, GMAIL_SEND}


def test_unregistered_redirect_uri_gets_an_html_400_and_no_redirect(sandbox, web_client):
    resp, _ = authorize(sandbox, web_client, redirect_uri="http://evil.example/cb")
    assert resp.status_code == 400
    assert "Location" not in resp.headers
    assert resp.headers["Content-Type"].startswith("text/html")
    assert "redirect_uri_mismatch" in resp.text
    # a prefix or a trailing slash is not the same URI either
    resp, _ = authorize(sandbox, web_client, redirect_uri=web_client.redirect_uri + "/")
    assert resp.status_code == 400


def test_unknown_client_gets_an_html_400(sandbox, web_client):
    resp, _ = authorize(sandbox, web_client, client_id="nobody.apps.googleusercontent.com")
    assert resp.status_code == 400 and "invalid_client" in resp.text and "Location" not in resp.headers


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"scope": "openid https://www.googleapis.com/auth/drive"}, "invalid_scope"),
        ({"scope": ""}, "invalid_request"),
        ({"response_type": None}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"access_type": "forever"}, "invalid_request"),
        ({"prompt": "none consent"}, "invalid_request"),
        ({"include_granted_scopes": "yes"}, "invalid_request"),
        ({"code_challenge": "x" * 43, "code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": "x" * 43}, "invalid_request"),  # no method means plain
        ({"code_challenge": "short", "code_challenge_method": "S256"}, "invalid_request"),
    ],
)
def test_bad_authorization_parameters_redirect_back_with_the_error(sandbox, web_client, extra, error):
    resp, params = authorize(sandbox, web_client, **extra)
    q = callback(resp)
    assert q["error"] == error and "code" not in q
    assert q["state"] == params["state"]


def test_user_can_untick_a_scope(sandbox, web_client):
    sandbox.oauth.set_consent(untick=["gmail.send"])
    q = callback(authorize(sandbox, web_client)[0])
    assert GMAIL_SEND not in q["scope"].split()
    tokens = exchange(sandbox, web_client, q["code"]).json()
    assert GMAIL_SEND not in tokens["scope"].split()
    assert GMAIL_SEND not in sandbox.oauth.token_info(tokens["access_token"]).scopes
    # the next consent is a normal one again
    assert GMAIL_SEND in callback(authorize(sandbox, web_client)[0])["scope"].split()


def test_user_denial_redirects_with_access_denied(sandbox, web_client):
    r = requests.post(sandbox.google_url + "/_sandbox/consent", json={"deny": True}, timeout=5)
    assert r.status_code == 200
    resp, params = authorize(sandbox, web_client)
    q = callback(resp)
    assert q == {"error": "access_denied", "state": params["state"]}


def test_consent_account_can_be_chosen_per_next_consent_or_as_default(sandbox, web_client):
    requests.post(
        sandbox.google_url + "/_sandbox/consent",
        json={"email": "dflt@example.com", "default": True},
        timeout=5,
    )
    requests.post(sandbox.google_url + "/_sandbox/consent", json={"email": "once@example.com"}, timeout=5)
    first = connect(sandbox, web_client)
    second = connect(sandbox, web_client)
    assert sandbox.oauth.token_info(first["access_token"]).email == "once@example.com"
    assert sandbox.oauth.token_info(second["access_token"]).email == "dflt@example.com"


def test_prompt_none_without_a_prior_grant_is_consent_required(sandbox, web_client):
    q = callback(authorize(sandbox, web_client, prompt="none")[0])
    assert q["error"] == "consent_required"
    connect(sandbox, web_client)
    assert "code" in callback(authorize(sandbox, web_client, prompt="none")[0])


def test_include_granted_scopes_unions_with_earlier_consent(sandbox, web_client):
    connect(sandbox, web_client, scope=f"openid {GMAIL_SEND}")
    narrow = connect(sandbox, web_client, scope=GMAIL_METADATA)
    assert narrow["scope"].split() == [GMAIL_METADATA]
    wide = connect(sandbox, web_client, scope=GMAIL_METADATA, include_granted_scopes="true")
    assert set(wide["scope"].split()) == {"openid", GMAIL_SEND, GMAIL_METADATA}


# ------------------------------------------------------------------------------- tokens


def test_code_exchange_returns_google_shaped_tokens_and_a_verifiable_id_token(sandbox, web_client):
    tokens = connect(sandbox, web_client, access_type="offline", nonce="n-1")
    assert tokens["token_type"] == "Bearer"
    assert 3500 < tokens["expires_in"] <= 3600
    assert tokens["access_token"].startswith("ya29.") and tokens["refresh_token"].startswith("1//")
    jwks = jwt.PyJWKClient(sandbox.google_url + "/oauth2/v3/certs")
    key = jwks.get_signing_key_from_jwt(tokens["id_token"])
    claims = jwt.decode(
        tokens["id_token"],
        key.key,
        algorithms=["RS256"],
        audience=web_client.client_id,
        issuer="https://accounts.google.com",
    )
    assert claims["email"] == "sandbox.user@gmail.com" and claims["email_verified"] is True
    assert claims["sub"] == subject_for("sandbox.user@gmail.com") and claims["nonce"] == "n-1"


def test_authorization_code_is_single_use(sandbox, web_client):
    verifier, challenge = pkce()
    code = callback(authorize(sandbox, web_client, challenge=challenge)[0])["code"]
    assert exchange(sandbox, web_client, code, verifier).status_code == 200
    again = exchange(sandbox, web_client, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_pkce_verifier_must_match_the_challenge(sandbox, web_client):
    _, challenge = pkce()
    code = callback(authorize(sandbox, web_client, challenge=challenge)[0])["code"]
    wrong = exchange(sandbox, web_client, code, pkce()[0])
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    missing = exchange(sandbox, web_client, code)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_grant"


def test_code_exchange_requires_the_exact_redirect_uri(sandbox, web_client):
    code = callback(authorize(sandbox, web_client)[0])["code"]
    resp = exchange(sandbox, web_client, code, redirect_uri=web_client.redirect_uri + "?x=1")
    assert resp.status_code == 400 and resp.json()["error"] == "redirect_uri_mismatch"


def test_wrong_client_secret_is_invalid_client_401(sandbox, web_client):
    code = callback(authorize(sandbox, web_client)[0])["code"]
    resp = exchange(sandbox, web_client, code, secret="wrong")
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"
    # the code survives a failed client authentication; HTTP Basic works as well as the form
    ok = exchange(sandbox, web_client, code, auth=(web_client.client_id, web_client.client_secret))
    assert ok.status_code == 200


def test_code_issued_to_another_client_is_refused(sandbox, web_client, other_client):
    code = callback(authorize(sandbox, web_client)[0])["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": web_client.redirect_uri,
        "client_id": other_client.client_id,
        "client_secret": other_client.client_secret,
    }
    resp = requests.post(sandbox.google_url + "/token", data=form, timeout=5)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
        ({}, 400, "unsupported_grant_type"),
        ({"grant_type": "authorization_code", "code": "x", "redirect_uri": "y"}, 400, "invalid_request"),
        (
            {"grant_type": "refresh_token", "refresh_token": "1//x", "client_id": "nope"},
            401,
            "invalid_client",
        ),
        (
            {"grant_type": "refresh_token", "client_id": "$web", "client_secret": "$web"},
            400,
            "invalid_request",
        ),
        (
            {"grant_type": "refresh_token", "refresh_token": "1//x", "client_id": "$web"},
            400,
            "invalid_request",
        ),
        (
            {
                "grant_type": "refresh_token",
                "refresh_token": "1//nope",
                "client_id": "$web",
                "client_secret": "$web",
            },
            400,
            "invalid_grant",
        ),
    ],
)
def test_bad_token_requests_get_googles_json_errors(sandbox, web_client, form, status, error):
    form = {
        k: (
            web_client.client_id
            if v == "$web" and k == "client_id"
            else web_client.client_secret
            if v == "$web"
            else v
        )
        for k, v in form.items()
    }
    resp = requests.post(sandbox.google_url + "/token", data=form, timeout=5)
    assert resp.status_code == status
    assert resp.json()["error"] == error


def test_refresh_token_only_on_offline_first_consent_or_prompt_consent(sandbox, web_client):
    assert "refresh_token" not in connect(sandbox, web_client)  # online
    assert "refresh_token" in connect(sandbox, web_client, access_type="offline")
    assert "refresh_token" not in connect(sandbox, web_client, access_type="offline")  # re-consent
    assert "refresh_token" in connect(sandbox, web_client, access_type="offline", prompt="consent")


def test_refresh_serves_a_new_access_token_without_a_new_refresh_token(sandbox, web_client):
    tokens = connect(sandbox, web_client, access_type="offline", login_hint="bob@example.com")
    resp = refresh(sandbox, web_client, tokens["refresh_token"])
    assert resp.status_code == 200
    body = resp.json()
    assert "refresh_token" not in body
    assert body["access_token"] != tokens["access_token"]
    assert set(body["scope"].split()) == set(tokens["scope"].split())
    assert sandbox.oauth.refresh_count("bob@example.com") == 1
    counters = requests.get(sandbox.google_url + "/_sandbox/counters", timeout=5).json()
    assert counters["oauth"]["refresh_grants"] == {"bob@example.com": 1}


def test_google_auth_credentials_refresh_against_the_stand_in(sandbox, web_client):
    tokens = connect(sandbox, web_client, access_type="offline")
    creds = Credentials(
        token=None,
        refresh_token=tokens["refresh_token"],
        token_uri=sandbox.google_url + "/token",
        client_id=web_client.client_id,
        client_secret=web_client.client_secret,
    )
    creds.refresh(google.auth.transport.requests.Request())
    assert creds.valid and creds.token.startswith("ya29.")
    assert creds.expiry > datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=50)
    assert creds.refresh_token == tokens["refresh_token"]  # kept: Google sent none
    assert sandbox.oauth.token_info(creds.token).scopes == frozenset(tokens["scope"].split())


def test_refresh_by_another_client_is_refused(sandbox, web_client, other_client):
    tokens = connect(sandbox, web_client, access_type="offline")
    resp = refresh(sandbox, other_client, tokens["refresh_token"])
    assert resp.status_code in (400, 401) and resp.json()["error"] in ("unauthorized_client", "invalid_grant")


def test_refresh_cannot_widen_scopes(sandbox, web_client):
    tokens = connect(sandbox, web_client, access_type="offline", scope=GMAIL_SEND)
    resp = refresh(sandbox, web_client, tokens["refresh_token"], scope=f"{GMAIL_SEND} {GMAIL_METADATA}")
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_scope"


def test_access_token_lifetime_and_clock_control_expiry(sandbox, web_client):
    r = requests.post(sandbox.google_url + "/_sandbox/oauth/token-lifetime", json={"seconds": 120}, timeout=5)
    assert r.status_code == 200
    tokens = connect(sandbox, web_client)
    assert 100 < tokens["expires_in"] <= 120
    assert sandbox.oauth.token_info(tokens["access_token"]) is not None
    requests.post(sandbox.google_url + "/_sandbox/clock", json={"advance_s": 121}, timeout=5)
    assert sandbox.oauth.token_info(tokens["access_token"]) is None


# ------------------------------------------------------------------------------ revoke


def test_revoked_refresh_token_then_refresh_is_invalid_grant(sandbox, web_client):
    tokens = connect(sandbox, web_client, access_type="offline")
    assert revoke(sandbox, tokens["refresh_token"]).status_code == 200
    resp = refresh(sandbox, web_client, tokens["refresh_token"])
    assert resp.status_code == 400
    assert resp.json() == {
        "error": "invalid_grant",
        "error_description": "Token has been expired or revoked.",
    }
    assert sandbox.oauth.token_info(tokens["access_token"]) is None  # the grant's access tokens die too


def test_revoking_an_access_token_ends_the_whole_grant(sandbox, web_client):
    tokens = connect(sandbox, web_client, access_type="offline")
    assert revoke(sandbox, tokens["access_token"]).status_code == 200
    assert refresh(sandbox, web_client, tokens["refresh_token"]).json()["error"] == "invalid_grant"
    # after revocation the next offline consent is a first consent again
    assert "refresh_token" in connect(sandbox, web_client, access_type="offline")


def test_revoking_twice_or_an_unknown_token_is_400_invalid_token(sandbox, web_client):
    tokens = connect(sandbox, web_client, access_type="offline")
    assert revoke(sandbox, tokens["refresh_token"]).status_code == 200
    again = revoke(sandbox, tokens["refresh_token"])
    assert again.status_code == 400 and again.json()["error"] == "invalid_token"
    assert revoke(sandbox, "ya29.unknown").status_code == 400
    assert requests.post(sandbox.google_url + "/revoke", timeout=5).status_code == 400


def test_grants_show_in_the_control_api_and_can_be_ended_server_side(sandbox, web_client):
    tokens = connect(sandbox, web_client, access_type="offline")
    grants = requests.get(sandbox.google_url + "/_sandbox/grants", timeout=5).json()["grants"]
    assert grants[0]["email"] == "sandbox.user@gmail.com" and not grants[0]["revoked"]
    assert grants[0]["refresh_tokens"][0]["token"] == tokens["refresh_token"]
    r = requests.post(
        sandbox.google_url + "/_sandbox/grants/revoke", json={"email": "sandbox.user@gmail.com"}, timeout=5
    )
    assert r.json() == {"revoked": 1}
    assert refresh(sandbox, web_client, tokens["refresh_token"]).json()["error"] == "invalid_grant"


# ---------------------------------------------------------------------------- userinfo


def test_userinfo_returns_the_account_when_the_token_holds_the_email_scope(sandbox, web_client):
    tokens = connect(sandbox, web_client, login_hint="carol@example.com")
    for path in ("/oauth2/v3/userinfo", "/v1/userinfo"):
        resp = requests.get(
            sandbox.google_url + path,
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
            timeout=5,
        )
        assert resp.status_code == 200
        assert resp.json() == {
            "sub": subject_for("carol@example.com"),
            "email": "carol@example.com",
            "email_verified": True,
        }


def test_userinfo_refuses_missing_bad_and_insufficient_tokens(sandbox, web_client):
    url = sandbox.google_url + "/oauth2/v3/userinfo"
    assert requests.get(url, timeout=5).status_code == 401
    bad = requests.get(url, headers={"Authorization": "Bearer ya29.nope"}, timeout=5)
    assert bad.status_code == 401 and "WWW-Authenticate" in bad.headers
    send_only = connect(sandbox, web_client, scope=GMAIL_SEND)
    resp = requests.get(url, headers={"Authorization": f"Bearer {send_only['access_token']}"}, timeout=5)
    assert resp.status_code == 403


# ------------------------------------------------------------------ faults and control


def test_injected_token_faults_fire_n_times_then_stop(sandbox, web_client):
    tokens = connect(sandbox, web_client, access_type="offline")
    r = requests.post(
        sandbox.google_url + "/_sandbox/faults",
        json={"method": "oauth.token", "status": 503, "count": 2},
        timeout=5,
    )
    assert r.status_code == 200
    for _ in range(2):
        resp = refresh(sandbox, web_client, tokens["refresh_token"])
        assert resp.status_code == 503 and resp.json()["error"] == "temporarily_unavailable"
    assert refresh(sandbox, web_client, tokens["refresh_token"]).status_code == 200
    log = requests.get(sandbox.google_url + "/_sandbox/requests?prefix=oauth.token", timeout=5).json()[
        "requests"
    ]
    assert [e.get("fault") for e in log[-3:]] == [503, 503, None]


def test_invalid_grant_is_final_for_google_auth_but_429_is_retried(sandbox, web_client):
    tokens = connect(sandbox, web_client, access_type="offline")
    creds = Credentials(
        token=None,
        refresh_token=tokens["refresh_token"],
        token_uri=sandbox.google_url + "/token",
        client_id=web_client.client_id,
        client_secret=web_client.client_secret,
    )
    sandbox.control.arm("oauth.token", 429, count=1)
    creds.refresh(google.auth.transport.requests.Request())  # google-auth retries once and succeeds
    revoke(sandbox, tokens["refresh_token"])
    with pytest.raises(RefreshError) as err:
        creds.refresh(google.auth.transport.requests.Request())
    assert not err.value.retryable


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/_sandbox/faults", {"status": 503}),
        ("/_sandbox/faults", {"method": "oauth.token", "status": 503, "count": "3"}),
        ("/_sandbox/faults", {"method": "oauth.token", "status": "boom"}),
        ("/_sandbox/latency", {"ms": -1}),
        ("/_sandbox/consent", {"scopes": 7}),
        ("/_sandbox/consent", ["not", "an", "object"]),
        ("/_sandbox/oauth/token-lifetime", {"seconds": 0}),
        ("/_sandbox/kms/rotate", {"key_name": "nope"}),
        ("/_sandbox/oauth/issue", {"scopes": ["drive"]}),
    ],
)
def test_bad_control_api_input_is_a_400_json(sandbox, path, body):
    resp = requests.post(sandbox.google_url + path, json=body, timeout=5)
    assert resp.status_code == 400 and resp.json()["error"] == "bad_request"


def test_unknown_routes_and_methods_answer_json_not_a_crash(sandbox):
    assert requests.get(sandbox.google_url + "/nope", timeout=5).status_code == 404
    assert requests.get(sandbox.google_url + "/token", timeout=5).status_code == 405
    resp = requests.post(
        sandbox.google_url + "/token",
        data=b"\xff\xfe",
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert resp.status_code == 400


def test_latency_is_applied_per_method(sandbox, web_client):
    requests.post(
        sandbox.google_url + "/_sandbox/latency", json={"ms": 200, "method": "oauth.revoke"}, timeout=5
    )
    resp = revoke(sandbox, "ya29.unknown")
    assert resp.elapsed.total_seconds() >= 0.2
    assert requests.post(sandbox.google_url + "/_sandbox/reset", timeout=5).json() == {"ok": True}
    assert revoke(sandbox, "ya29.unknown").elapsed.total_seconds() < 0.2


def test_command_line_starts_every_endpoint_and_stops_on_sigterm(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coffeeping_sandbox",
            "--google-port",
            "0",
            "--kms-port",
            "0",
            "--clerk-port",
            "0",
            "--client",
            "cid:secret:http://localhost:8080/cb",
            "--access-token-lifetime",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        google = lines[0].split()[-1]
        assert google.startswith("http://127.0.0.1:")
        resp = requests.get(
            google + "/o/oauth2/v2/auth",
            params={
                "client_id": "cid",
                "redirect_uri": "http://localhost:8080/cb",
                "response_type": "code",
                "scope": "openid",
            },
            allow_redirects=False,
            timeout=5,
        )
        assert resp.status_code == 302 and resp.headers["Location"].startswith(
            "http://localhost:8080/cb?code="
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_tokeninfo_reports_client_scopes_and_expiry(sandbox, web_client):
    tokens = connect(sandbox, web_client, login_hint="dan@example.com")
    info = requests.get(
        sandbox.google_url + "/tokeninfo", params={"access_token": tokens["access_token"]}, timeout=5
    ).json()
    assert info["aud"] == web_client.client_id and info["email"] == "dan@example.com"
    assert set(info["scope"].split()) == set(tokens["scope"].split())
    bad = requests.get(sandbox.google_url + "/tokeninfo", params={"access_token": "ya29.x"}, timeout=5)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_token"


def test_clients_can_be_registered_at_runtime_and_tokens_issued_without_a_browser(sandbox, google_token):
    r = requests.post(
        sandbox.google_url + "/_sandbox/clients",
        json={"client_id": "late", "client_secret": "s", "redirect_uris": ["http://localhost:1/cb"]},
        timeout=5,
    )
    assert r.status_code == 200
    resp, _ = authorize(
        sandbox, type("C", (), {"client_id": "late", "redirect_uri": "http://localhost:1/cb"}), scope="openid"
    )
    assert "code" in callback(resp)
    token = google_token(email="erin@example.com", scopes=["gmail.send", "email"])
    info = sandbox.oauth.token_info(token)
    assert info.email == "erin@example.com" and info.scopes == {GMAIL_SEND, USERINFO_EMAIL}
    sandbox.reset()
    assert sandbox.oauth.token_info(token) is None
    assert "late" not in sandbox.oauth.clients
