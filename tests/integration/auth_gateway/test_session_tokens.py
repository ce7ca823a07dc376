"""Session-token verification at the gateway (SECURITY.md, "Session tokens"), through real HTTP
against the running gateway and the Clerk stand-in."""

from __future__ import annotations

import base64
import json
import time
import uuid

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def _get_me(stack, token: str | None = None, **kwargs) -> requests.Response:
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.get(f"{stack.url}/v1/me", headers=headers, timeout=10, **kwargs)


def _mint(stack, user_id: str, **body) -> str:
    reply = requests.post(f"{stack.config.clerk_url}/_sandbox/tokens", json={"user_id": user_id, **body}, timeout=10)
    reply.raise_for_status()
    return reply.json()["token"]


def _clerk_stats(stack) -> dict:
    return requests.get(f"{stack.config.clerk_url}/_sandbox/stats", timeout=10).json()


def _assert_refused(reply: requests.Response) -> None:
    assert reply.status_code == 401, reply.text
    assert reply.headers["Content-Type"] == "application/problem+json"
    body = reply.json()
    # One answer for every failure: it never says which check failed.
    assert body["detail"] == "a valid session token is required"


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(stack, user_id: str) -> dict:
    now = int(time.time())
    return {"iss": stack.config.clerk_url, "sub": user_id, "sid": "sess_x", "azp": "http://localhost:3000",
            "iat": now, "nbf": now - 5, "exp": now + 60, "v": 2}


def test_a_valid_token_is_accepted(stack):
    assert _get_me(stack, _mint(stack, "user_tok_ok")).status_code == 200


def test_missing_token_and_wrong_scheme_are_refused(stack):
    _assert_refused(_get_me(stack))
    _assert_refused(_get_me(stack, headers={"Authorization": f"Basic {_mint(stack, 'user_tok_basic')}"}))


def test_alg_none_is_refused(stack):
    header = _b64({"alg": "none", "typ": "JWT"})
    _assert_refused(_get_me(stack, f"{header}.{_b64(_claims(stack, 'user_tok_none'))}."))


def test_hmac_token_keyed_with_the_public_key_is_refused(stack):
    jwks = requests.get(f"{stack.config.clerk_url}/.well-known/jwks.json", timeout=10).json()
    kid = jwks["keys"][0]["kid"]
    public_pem = jwt.PyJWK(jwks["keys"][0]).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = _b64({"alg": "HS256", "typ": "JWT", "kid": kid})
    body = _b64(_claims(stack, "user_tok_hs"))
    import hashlib
    import hmac

    signature = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{body}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    _assert_refused(_get_me(stack, forged))


def test_a_foreign_signing_key_under_a_known_kid_is_refused(stack):
    jwks = requests.get(f"{stack.config.clerk_url}/.well-known/jwks.json", timeout=10).json()
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(_claims(stack, "user_tok_foreign"), foreign, algorithm="RS256",
                       headers={"kid": jwks["keys"][0]["kid"]})
    _assert_refused(_get_me(stack, token))


def test_a_tampered_payload_is_refused(stack):
    header, _payload, signature = _mint(stack, "user_tok_tamper").split(".")
    _assert_refused(_get_me(stack, f"{header}.{_b64(_claims(stack, 'user_victim'))}.{signature}"))


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat", "sub", "sid", "iss"])
def test_a_token_missing_a_required_claim_is_refused(stack, claim):
    _assert_refused(_get_me(stack, _mint(stack, "user_tok_missing", omit=[claim])))


def test_wrong_issuer_is_refused(stack):
    _assert_refused(_get_me(stack, _mint(stack, "user_tok_iss", claims={"iss": "https://evil.example"})))


def test_an_azp_outside_the_allowed_parties_is_refused(stack):
    _assert_refused(_get_me(stack, _mint(stack, "user_tok_azp", azp="https://evil.example")))


def test_a_token_without_azp_is_refused_when_parties_are_configured(stack):
    # A token minted for no particular frontend is not one of ours (CLERK_AUTHORIZED_PARTIES is set).
    _assert_refused(_get_me(stack, _mint(stack, "user_tok_noazp", omit=["azp"])))
    assert _get_me(stack, _mint(stack, "user_tok_noazp", azp="http://localhost:3000")).status_code == 200


def test_expired_beyond_the_leeway_is_refused_and_within_it_accepted(stack):
    now = int(time.time())
    _assert_refused(_get_me(stack, _mint(stack, "user_tok_exp", iat=now - 100, lifetime_s=90)))
    assert _get_me(stack, _mint(stack, "user_tok_exp2", iat=now - 62, lifetime_s=60)).status_code == 200


def test_not_yet_valid_beyond_the_leeway_is_refused(stack):
    now = int(time.time())
    _assert_refused(_get_me(stack, _mint(stack, "user_tok_nbf", claims={"nbf": now + 60, "iat": now + 60,
                                                                         "exp": now + 120})))


def test_oversized_and_malformed_tokens_and_cookies_are_401_not_500(stack):
    for token in ["x" * 12000, "a.b.c", "....", "eyJhbGciOiJSUzI1NiJ9.e30.", "%%%.%%%.%%%", "é.é.é"]:
        _assert_refused(_get_me(stack, token))
    _assert_refused(requests.get(f"{stack.url}/v1/me", cookies={"__session": "garbage"}, timeout=10))
    _assert_refused(requests.get(f"{stack.url}/v1/me", headers={"Cookie": "__session=" + "y" * 3000}, timeout=10))


def test_a_hostile_kid_is_refused(stack):
    for kid in ["../../etc/passwd", "x" * 500, "", "' OR 1=1 --"]:
        header = _b64({"alg": "RS256", "typ": "JWT", "kid": kid})
        _assert_refused(_get_me(stack, f"{header}.{_b64(_claims(stack, 'user_tok_kid'))}.c2ln"))


def test_a_rotated_key_verifies_at_once(stack):
    # Warm the gateway's cache with the current key, then rotate at the issuer.
    assert _get_me(stack, _mint(stack, "user_tok_rot")).status_code == 200
    requests.post(f"{stack.config.clerk_url}/_sandbox/rotate", json={"keep_old": True}, timeout=10).raise_for_status()
    # Every gunicorn worker must pick up the new key on first sight of its kid.
    for _ in range(6):
        assert _get_me(stack, _mint(stack, "user_tok_rot")).status_code == 200


def test_a_flood_of_unknown_kids_does_not_hammer_the_jwks_endpoint(stack):
    before = _clerk_stats(stack)["jwks_fetches"]
    for _ in range(200):
        header = _b64({"alg": "RS256", "typ": "JWT", "kid": uuid.uuid4().hex})
        _assert_refused(_get_me(stack, f"{header}.{_b64(_claims(stack, 'user_tok_flood'))}.c2ln"))
    fetched = _clerk_stats(stack)["jwks_fetches"] - before
    workers = 2
    # A small burst per worker, then at most one fetch per refill period.
    assert fetched <= workers * 4, fetched
