"""The Clerk stand-in serves a JWKS and mints Clerk-shaped RS256 session tokens."""

from __future__ import annotations

import subprocess
import sys
import time

import jwt
import pytest
import requests


def mint(sandbox, **body) -> str:
    resp = requests.post(
        sandbox.clerk_url + "/_sandbox/tokens", json={"user_id": "user_123", **body}, timeout=5
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["token"]


def verify(sandbox, token, **options):
    jwks = jwt.PyJWKClient(sandbox.clerk_url + "/.well-known/jwks.json", cache_keys=False)
    key = jwks.get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        key.key,
        algorithms=["RS256"],
        issuer=sandbox.clerk_url,
        options={"require": ["exp", "nbf", "iat", "iss", "sub", "sid"], **options},
    )


def test_session_token_has_clerks_claim_shape_and_verifies_against_the_jwks(sandbox):
    before = int(time.time())
    token = mint(sandbox)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256" and header["kid"]
    claims = verify(sandbox, token)
    assert claims["sub"] == "user_123"
    assert claims["iss"] == sandbox.clerk_url
    assert claims["azp"] == "http://localhost:3000"
    assert claims["sid"].startswith("sess_")
    assert claims["v"] == 2
    assert before <= claims["iat"] <= before + 2
    assert claims["nbf"] == claims["iat"] - 5
    assert claims["exp"] == claims["iat"] + 60


def test_lifetime_azp_sid_and_extra_claims_are_configurable(sandbox):
    token = mint(
        sandbox, lifetime_s=600, azp="https://app.coffeeping.dev", sid="sess_fixed", claims={"org": "o1"}
    )
    claims = verify(sandbox, token)
    assert claims["exp"] - claims["iat"] == 600
    assert claims["azp"] == "https://app.coffeeping.dev"
    assert claims["sid"] == "sess_fixed" and claims["org"] == "o1"


def test_expired_and_claim_less_tokens_can_be_minted_for_refusal_tests(sandbox):
    expired = mint(sandbox, iat=int(time.time()) - 3600)
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(sandbox, expired)
    no_sid = mint(sandbox, omit=["sid"])
    with pytest.raises(jwt.MissingRequiredClaimError):
        verify(sandbox, no_sid)


def test_rotation_keeping_the_old_key_verifies_old_and_new_tokens(sandbox):
    old = mint(sandbox)
    resp = requests.post(sandbox.clerk_url + "/_sandbox/rotate", json={"keep_old": True}, timeout=5)
    new_kid = resp.json()["kid"]
    new = mint(sandbox)
    assert jwt.get_unverified_header(new)["kid"] == new_kid != jwt.get_unverified_header(old)["kid"]
    assert verify(sandbox, old)["sub"] == verify(sandbox, new)["sub"] == "user_123"
    assert len(requests.get(sandbox.clerk_url + "/.well-known/jwks.json", timeout=5).json()["keys"]) == 2


def test_rotation_dropping_the_old_key_invalidates_old_tokens(sandbox):
    old = mint(sandbox)
    requests.post(sandbox.clerk_url + "/_sandbox/rotate", json={"keep_old": False}, timeout=5)
    with pytest.raises(jwt.PyJWKClientError):
        verify(sandbox, old)
    verify(sandbox, mint(sandbox))


def test_reset_restores_the_original_signing_key(sandbox):
    token = mint(sandbox)
    sandbox.clerk.rotate(keep_old=False)
    sandbox.reset()
    verify(sandbox, token)


def test_jwks_fetches_are_counted(sandbox):
    assert sandbox.clerk.stats()["jwks_fetches"] == 0
    for _ in range(3):
        requests.get(sandbox.clerk_url + "/.well-known/jwks.json", timeout=5)
    requests.get(sandbox.clerk_url + "/v1/jwks", timeout=5)
    stats = requests.get(sandbox.clerk_url + "/_sandbox/stats", timeout=5).json()
    assert stats["jwks_fetches"] == 4
    assert sandbox.control.count("clerk.jwks") == 4


def test_jwks_fault_fires_then_stops(sandbox):
    sandbox.control.arm("clerk.jwks", 503, count=1)
    assert requests.get(sandbox.clerk_url + "/.well-known/jwks.json", timeout=5).status_code == 503
    assert requests.get(sandbox.clerk_url + "/.well-known/jwks.json", timeout=5).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"user_id": ""},
        {"user_id": 5},
        {"user_id": "u", "lifetime_s": "60"},
        {"user_id": "u", "omit": "sid"},
    ],
)
def test_bad_mint_requests_are_400_json(sandbox, body):
    resp = requests.post(sandbox.clerk_url + "/_sandbox/tokens", json=body, timeout=5)
    assert resp.status_code == 400 and resp.json()["error"] == "bad_request"
    resp = requests.post(sandbox.clerk_url + "/_sandbox/tokens", data="[", timeout=5)
    assert resp.status_code == 400


def test_cli_mint_prints_a_token_from_the_running_stand_in(sandbox):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "coffeeping_sandbox.clerk",
            "mint",
            "--user",
            "user_cli",
            "--url",
            sandbox.clerk_url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert verify(sandbox, out.stdout.strip())["sub"] == "user_cli"


def test_issuer_can_be_configured(sandbox):
    sandbox.clerk.issuer = "https://clerk.coffeeping.dev"
    try:
        token = mint(sandbox)
        assert jwt.decode(token, options={"verify_signature": False})["iss"] == "https://clerk.coffeeping.dev"
    finally:
        sandbox.clerk.issuer = None
