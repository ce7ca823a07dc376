"""The walking skeleton through the public API, with the system started as a user starts it."""

from __future__ import annotations

import base64
import json

import requests


def test_me_with_a_minted_token_answers_200_and_creates_the_user_once(stack):
    headers = {"Authorization": f"Bearer {stack.token('user_platform1')}"}
    first = requests.get(f"{stack.url}/v1/me", headers=headers, timeout=10)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["user_id"] == "user_platform1"
    assert body["gmail"] == {"connected": False}
    again = requests.get(f"{stack.url}/v1/me", headers=headers, timeout=10).json()
    assert again["created_at"] == body["created_at"]


def test_me_with_a_tampered_token_answers_401_problem(stack):
    token = stack.token("user_platform2")
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "user_someone_else"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    reply = requests.get(f"{stack.url}/v1/me", headers={"Authorization": f"Bearer {header}.{forged}.{signature}"},
                         timeout=10)
    assert reply.status_code == 401
    assert reply.headers["Content-Type"] == "application/problem+json"
    assert "Traceback" not in reply.text


def test_session_cookie_is_accepted_like_a_bearer_token(stack):
    reply = requests.get(f"{stack.url}/v1/me", cookies={"__session": stack.token("user_platform3")}, timeout=10)
    assert reply.status_code == 200


def test_healthz_says_only_ok(stack):
    reply = requests.get(f"{stack.url}/healthz", timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"status": "ok"}  # public: nothing about what is behind it


def test_every_response_carries_hsts_and_security_headers(stack):
    for path in ("/healthz", "/v1/me", "/nope", "/.well-known/security.txt"):
        reply = requests.get(f"{stack.url}{path}", timeout=10)
        assert reply.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        assert reply.headers["X-Frame-Options"] == "DENY"
        assert "Referrer-Policy" in reply.headers
    assert requests.get(f"{stack.url}/v1/me", timeout=10).headers["Cache-Control"] == "no-store"


def test_security_txt_names_the_contact_and_an_expiry(stack):
    reply = requests.get(f"{stack.url}/.well-known/security.txt", timeout=10)
    assert reply.status_code == 200
    assert "Contact: mailto:security@coffeeping.io" in reply.text
    assert "Expires: " in reply.text


def test_a_request_id_follows_the_request_from_http_into_grpc_logs(stack):
    import time
    import uuid

    rid = uuid.uuid4().hex
    headers = {"Authorization": f"Bearer {stack.token('user_platform_rid')}", "X-Request-ID": rid}
    assert requests.get(f"{stack.url}/v1/me", headers=headers, timeout=10).headers["X-Request-ID"] == rid
    deadline = time.monotonic() + 5
    found = {}
    while time.monotonic() < deadline and len(found) < 2:
        for service in ("auth-gateway", "accounts"):
            for line in (stack.config.var_dir / "logs" / f"{service}.log").read_text().splitlines():
                if rid in line:
                    found[service] = json.loads(line)
        time.sleep(0.2)
    assert found["accounts"]["request_id"] == rid
    assert found["accounts"]["rpc_method"] == "/coffeeping.accounts.v1.Accounts/GetMe"
    assert found["auth-gateway"]["request_id"] == rid
