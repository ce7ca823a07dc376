"""Sessions at the gateway (SECURITY.md, "Session tokens" and "Browser pages"): the allowed parties are
required outside development, a JWKS outage never turns into a fetch per request, and a state-changing
request that rides on the ``__session`` cookie must come from one of the app's own origins."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from werkzeug.serving import make_server

from coffeeping.common.config import ConfigError, load
from coffeeping_gateway.app import create_app
from coffeeping_gateway.auth import ClerkVerifier, JwksCache
from coffeeping_gateway.config import Settings

APP_ORIGIN = "http://localhost:3000"
PARTIES_LINE = "configuration error: CLERK_AUTHORIZED_PARTIES is required unless COFFEEPING_ENV=development"


def _env(stack, **changes: str | None) -> dict[str, str]:
    env = dict(stack.config.env("auth-gateway"))
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- CLERK_AUTHORIZED_PARTIES outside development ------------------------------------------------------

@pytest.mark.parametrize("parties", [None, "", " , "])
def test_the_gateway_refuses_to_start_without_authorized_parties_outside_development(stack, parties):
    for environment in (None, "production"):
        env = _env(stack, CLERK_AUTHORIZED_PARTIES=parties, COFFEEPING_ENV=environment,
                   GATEWAY_PORT=str(_free_port()))
        run = subprocess.run([sys.executable, "-m", "coffeeping_gateway"], env=env, capture_output=True, timeout=60)
        stderr = run.stderr.decode()
        assert run.returncode == 2, stderr[-2000:]
        assert "Traceback" not in stderr
        assert [line for line in stderr.splitlines() if "CLERK_AUTHORIZED_PARTIES" in line] == [PARTIES_LINE]


def test_only_an_explicit_development_environment_runs_without_parties_and_then_checks_no_azp(stack):
    with pytest.raises(ConfigError, match="^COFFEEPING_ENV must be development or production"):
        load(Settings, _env(stack, COFFEEPING_ENV="staging"))
    settings = load(Settings, _env(stack, CLERK_AUTHORIZED_PARTIES=None, COFFEEPING_ENV="development"))
    assert settings.environment == "development" and settings.clerk_authorized_parties == ()
    client = create_app(settings).test_client()
    for token in (stack.token("user_dev_noazp", omit=["azp"]), stack.token("user_dev_azp", azp="http://x.test")):
        assert client.get("/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    unset = {k: v for k, v in stack.config.env("auth-gateway").items() if k != "COFFEEPING_ENV"}
    assert load(Settings, unset).environment == "production"  # the default


# -- a JWKS outage -------------------------------------------------------------------------------------

@contextlib.contextmanager
def _serve(app) -> Iterator[str]:
    """The app on a real threaded HTTP server, in this process (so that its key cache can be observed)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        thread.join(10)


def _jwks_fetches(stack) -> int:
    return int(requests.get(f"{stack.config.clerk_url}/_sandbox/stats", timeout=10).json()["jwks_fetches"])


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _unknown_kid_token(stack) -> str:
    now = int(time.time())
    claims = {"iss": stack.config.clerk_url, "sub": "user_jwks_kid", "sid": "sess_x", "azp": APP_ORIGIN,
              "iat": now, "nbf": now - 5, "exp": now + 60}
    return f"{_b64({'alg': 'RS256', 'typ': 'JWT', 'kid': uuid.uuid4().hex})}.{_b64(claims)}.c2ln"


def test_a_jwks_outage_costs_at_most_three_fetches_and_known_keys_keep_working(stack, caplog):
    caplog.set_level(logging.INFO, logger="coffeeping_gateway.auth")
    settings = load(Settings, stack.config.env("auth-gateway"))
    # The production burst (3); a key set that goes stale after 1 s instead of 300 s, and a refill slower
    # than production's 10 s so that the bound does not depend on how fast this machine is.
    jwks = JwksCache(settings.clerk_jwks_url, lifespan_s=1.0, burst=3, refill_s=60.0)
    app = create_app(settings, verifier=ClerkVerifier(jwks, settings.clerk_issuer, settings.clerk_authorized_parties))
    # A token per request: a token this gateway has verified is not verified again (``VerifiedTokens``).
    token, *fresh = [stack.token(f"user_jwks_outage{i}") for i in range(102)]
    with _serve(app) as url:

        def me(bearer: str) -> int:
            return requests.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {bearer}"}, timeout=30).status_code

        assert me(token) == 200  # the key is known (one fetch)
        requests.post(f"{stack.google}/_sandbox/faults", json={"method": "clerk.jwks", "status": 503,
                                                               "count": 100_000}, timeout=10).raise_for_status()
        try:
            time.sleep(1.2)  # the key set is stale now: without a bound every request would refetch it
            before = _jwks_fetches(stack)
            with ThreadPoolExecutor(max_workers=8) as pool:
                statuses = list(pool.map(me, fresh[:100]))
            during = _jwks_fetches(stack) - before
            assert statuses == [200] * 100
            assert 1 <= during <= 3, during  # at least one: the outage was really met
            # Made-up kids are refused and cost no fetch beyond the same bound.
            assert [me(_unknown_kid_token(stack)) for _ in range(50)] == [401] * 50
            assert _jwks_fetches(stack) - before <= 3
            assert me(fresh[100]) == 200
        finally:
            requests.delete(f"{stack.google}/_sandbox/faults", params={"method": "clerk.jwks"}, timeout=10)
    failed = [r for r in caplog.records if r.getMessage() == "jwks fetch failed"]
    # Every attempt is logged with the running count; the last line tells how many there were.
    assert failed and failed[-1].attempts == jwks.attempts == 1 + len(failed)
    assert failed[-1].consecutive_failures == len(failed) == _jwks_fetches(stack) - before
    assert not any(t in repr(r.__dict__) for t in (token, *fresh) for r in caplog.records)  # no token logged


# -- cookie-authenticated unsafe requests ---------------------------------------------------------------

def _cookie(stack, method: str, path: str, user: str, origin: str | None = None, **kwargs) -> requests.Response:
    headers = {"Origin": origin} if origin is not None else {}
    return requests.request(method, f"{stack.url}{path}", cookies={"__session": stack.token(user)}, headers=headers,
                            timeout=30, **kwargs)


def _assert_cross_site_refused(reply: requests.Response) -> None:
    assert reply.status_code == 403, reply.text
    assert reply.headers["Content-Type"] == "application/problem+json"
    body = reply.json()
    assert body["status"] == 403 and "origin" in body["detail"] and "Traceback" not in reply.text


FOREIGN = [None, "https://evil.example", "null", APP_ORIGIN + ".evil.example", "http://localhost:3001"]


def test_a_cross_site_post_with_only_the_cookie_is_refused_and_changes_nothing(stack):
    user = f"user_csrf_{uuid.uuid4().hex[:8]}"
    contact = {"email": "ada@example.com", "first_name": "Ada"}
    for origin in FOREIGN:
        _assert_cross_site_refused(_cookie(stack, "POST", "/v1/contacts", user, origin, json=contact))
    assert stack.session(user).get("/v1/contacts").json()["items"] == []
    # The app's own origin with the cookie works, and so does a Bearer request without any Origin.
    assert _cookie(stack, "POST", "/v1/contacts", user, APP_ORIGIN, json=contact).status_code == 201
    bearer = requests.post(f"{stack.url}/v1/contacts", json={**contact, "email": "bob@example.com"},
                           headers={"Authorization": f"Bearer {stack.token(user)}"}, timeout=30)
    assert bearer.status_code == 201, bearer.text
    # An Authorization header authenticates, whatever cookie rides along.
    both = requests.post(f"{stack.url}/v1/contacts", json={**contact, "email": "cy@example.com"},
                         headers={"Authorization": f"Bearer {stack.token(user)}"},
                         cookies={"__session": stack.token(user)}, timeout=30)
    assert both.status_code == 201, both.text


def test_every_unsafe_method_riding_on_the_cookie_needs_an_allowed_origin(stack):
    user = f"user_csrf2_{uuid.uuid4().hex[:8]}"
    http = stack.session(user)
    contact_id = http.post("/v1/contacts", json={"email": "dee@example.com", "first_name": "Dee"}).json()["id"]
    attempts = [
        ("DELETE", "/v1/account", {"json": {"confirm": "delete my account"}}),
        ("PATCH", f"/v1/contacts/{contact_id}", {"json": {"email": "dee@example.com", "first_name": "Mallory"}}),
        ("DELETE", f"/v1/contacts/{contact_id}", {}),
        ("POST", "/v1/gmail/connect", {}),
        ("DELETE", "/v1/gmail", {}),
    ]
    for method, path, kwargs in attempts:
        for origin in (None, "https://evil.example"):
            _assert_cross_site_refused(_cookie(stack, method, path, user, origin, **kwargs))
    # Nothing happened: no deletion started, the contact is unchanged.
    assert http.get("/v1/account/deletion").status_code == 404
    assert http.get(f"/v1/contacts/{contact_id}").json()["first_name"] == "Dee"
    # Safe methods are unaffected by the check.
    assert _cookie(stack, "GET", "/v1/me", user).status_code == 200
    assert _cookie(stack, "GET", f"/v1/contacts/{contact_id}", user, "https://evil.example").status_code == 200


def test_webhooks_keep_their_own_verification_whatever_the_origin(stack):
    reply = requests.post(f"{stack.url}/v1/webhooks/clerk", data=b"{}", timeout=10,
                          headers={"Origin": "https://evil.example", "Content-Type": "application/json",
                                   "svix-id": "msg_x", "svix-timestamp": str(int(time.time())),
                                   "svix-signature": "v1,AAAA"},
                          cookies={"__session": stack.token("user_csrf_hook")})
    assert reply.status_code == 400, reply.text  # its signature check answered, not the Origin check


def test_openapi_documents_the_cross_site_refusal_on_every_unsafe_authenticated_operation(stack):
    document = requests.get(f"{stack.url}/openapi.json", timeout=10).json()
    assert "CrossSiteRefused" in document["components"]["responses"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            authenticated = "security" not in operation  # a Clerk session, as the document's default
            if method in ("post", "put", "patch", "delete") and authenticated:
                assert responses["403"] == {"$ref": "#/components/responses/CrossSiteRefused"}, (path, method)
            elif not authenticated:
                assert responses.get("403") != {"$ref": "#/components/responses/CrossSiteRefused"}, (path, method)
