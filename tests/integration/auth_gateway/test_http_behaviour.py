"""The gateway's HTTP contract: problem+json errors, body limits, CORS allow-list, and an OpenAPI
document in step with the routes."""

from __future__ import annotations

import re

import requests

from coffeeping.common.config import load
from coffeeping_gateway.app import create_app
from coffeeping_gateway.config import Settings


def test_unknown_routes_and_methods_answer_problem_json(stack):
    missing = requests.get(f"{stack.url}/v1/nothing-here", timeout=10)
    assert missing.status_code in (401, 404)
    assert missing.headers["Content-Type"] == "application/problem+json"
    wrong = requests.put(f"{stack.url}/healthz", timeout=10)
    assert wrong.status_code == 405
    assert wrong.headers["Content-Type"] == "application/problem+json"


def test_a_body_over_the_limit_is_413(stack):
    token = stack.token("user_http_big")
    reply = requests.post(f"{stack.url}/v1/me", data=b"x" * (3 * 1024 * 1024),
                          headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                          timeout=30)
    assert reply.status_code == 413
    assert reply.headers["Content-Type"] == "application/problem+json"


def test_cors_answers_only_configured_origins(stack):
    allowed = requests.options(f"{stack.url}/v1/me", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET"}, timeout=10)
    assert allowed.status_code == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    foreign = requests.options(f"{stack.url}/v1/me", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in foreign.headers


def test_request_ids_are_echoed_and_generated(stack):
    given = requests.get(f"{stack.url}/healthz", headers={"X-Request-ID": "abc123"}, timeout=10)
    assert given.headers["X-Request-ID"] == "abc123"
    # A load balancer's hyphenated UUID is kept, so one id follows the request from the edge.
    balancer = "3f2b8c1e-9d4a-4e6b-8f0a-1c2d3e4f5a6b"
    kept = requests.get(f"{stack.url}/healthz", headers={"X-Request-ID": balancer}, timeout=10)
    assert kept.headers["X-Request-ID"] == balancer
    made = requests.get(f"{stack.url}/healthz", headers={"X-Request-ID": "bad id;" + "x" * 100}, timeout=10)
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])


def test_openapi_documents_exactly_the_served_routes(stack):
    document = requests.get(f"{stack.url}/openapi.json", timeout=10).json()
    assert document["openapi"].startswith("3.")
    app = create_app(load(Settings, stack.config.env("auth-gateway")))
    served: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        # A <any(a, b):name> segment serves one documented path per alternative.
        choice = re.search(r"<any\(([^)]*)\):[^>]+>", rule.rule)
        alternatives = [a.strip() for a in choice.group(1).split(",")] if choice else [None]
        for alternative in alternatives:
            concrete = rule.rule.replace(choice.group(0), alternative) if choice else rule.rule
            path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", concrete)
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                served.add((path, method.lower()))
    documented = {(path, method) for path, item in document["paths"].items() for method in item
                  if method in ("get", "post", "put", "patch", "delete")}
    assert served == documented, {"undocumented": served - documented, "not served": documented - served}


def test_every_v1_route_requires_a_session_unless_marked_public(stack):
    app = create_app(load(Settings, stack.config.env("auth-gateway")))
    public = set()
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        if rule.rule.startswith("/v1/") and getattr(view, "public", False):
            public.add(rule.rule)
    # Only routes with a check of their own may skip the session: webhooks and push notifications.
    assert all("/webhooks/" in r or "/push" in r for r in public), public
