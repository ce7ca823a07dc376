"""The Flask application: security headers, authentication, problem+json errors, request ids."""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from coffeeping.common.logging import new_request_id, request_id_var
from coffeeping_gateway import views
from coffeeping_gateway.auth import ClerkVerifier, InvalidToken, JwksCache
from coffeeping_gateway.clients import Clients
from coffeeping_gateway.config import Settings
from coffeeping_gateway.problems import Problem, problem_response

log = logging.getLogger("coffeeping_gateway.access")

SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cross-Origin-Resource-Policy": "same-origin",
}


SESSION_COOKIE = "__session"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _session_token() -> tuple[str | None, bool]:
    """The session token and whether it came from the cookie (an Authorization header always wins)."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        return (token.strip() if scheme.lower() == "bearer" else ""), False
    return request.cookies.get(SESSION_COOKIE), True


def _cross_site(from_cookie: bool, allowed_origins: tuple[str, ...]) -> bool:
    """A state-changing request riding on the cookie must come from one of our own origins.

    A browser attaches the cookie to a form post or fetch from any site, but never lets that site set
    ``Origin`` or ``Authorization``: a Bearer request is the app's own, a cookie one needs the Origin.
    """
    return from_cookie and request.method in UNSAFE_METHODS and request.headers.get("Origin") not in allowed_origins


def create_app(settings: Settings, verifier: ClerkVerifier | None = None, clients: Clients | None = None) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["coffeeping.settings"] = settings
    app.extensions["coffeeping.verifier"] = verifier or ClerkVerifier(
        JwksCache(settings.clerk_jwks_url), settings.clerk_issuer, settings.clerk_authorized_parties
    )
    app.extensions["coffeeping.clients"] = clients or Clients(settings, settings.for_service("auth-gateway"))
    if not settings.clerk_authorized_parties:
        log.warning("CLERK_AUTHORIZED_PARTIES is empty: the azp of session tokens is not checked "
                    "(allowed only with COFFEEPING_ENV=development)")
    for blueprint in views.blueprints():
        app.register_blueprint(blueprint)

    @app.before_request
    def start() -> Response | None:
        g.started = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if incoming.isalnum() and len(incoming) <= 64 else new_request_id()
        request_id_var.set(rid)
        if request.content_length is not None and request.content_length > settings.max_body_bytes:
            # Refused before anything reads it, whatever the route (Flask only checks on read).
            return problem_response(413, "the request body is too large")
        if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
            return Response(status=204)
        view = app.view_functions.get(request.endpoint or "")
        if view is None or getattr(view, "public", False):
            return None
        token, from_cookie = _session_token()
        try:
            g.session = app.extensions["coffeeping.verifier"].verify(token or "")
        except InvalidToken as exc:
            log.info("authentication refused", extra={"reason": str(exc)})
            return problem_response(401, "a valid session token is required",
                                    headers={"WWW-Authenticate": "Bearer"})
        if _cross_site(from_cookie, settings.cors_origins):
            log.info("cross-site request refused", extra={"method": request.method, "route": request.url_rule.rule
                                                          if request.url_rule else "unmatched"})
            return problem_response(403, "a request authenticated by the session cookie must come from the app's "
                                    "own origin")
        return None

    @app.after_request
    def finish(response: Response) -> Response:
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        if request.path.startswith("/v1/"):
            response.headers["Cache-Control"] = "no-store"
        origin = request.headers.get("Origin")
        if origin and origin in settings.cors_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, X-Request-ID"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, PATCH, DELETE"
            response.headers["Access-Control-Max-Age"] = "600"
            response.headers.add("Vary", "Origin")
        response.headers["X-Request-ID"] = request_id_var.get()
        rule = request.url_rule.rule if request.url_rule else "unmatched"
        elapsed_ms = round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2)
        log.info("request", extra={"method": request.method, "route": rule, "status": response.status_code,
                                   "ms": elapsed_ms})
        return response

    @app.errorhandler(Problem)
    def on_problem(exc: Problem) -> Response:
        return problem_response(exc.status, exc.detail, **exc.extra)

    @app.errorhandler(HTTPException)
    def on_http(exc: HTTPException) -> Response:
        status = exc.code or 500
        detail = {413: "the request body is too large", 404: "no such resource",
                  405: "method not allowed for this resource"}.get(status, "")
        response = problem_response(status, detail)
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def on_error(exc: Exception) -> Any:
        log.error("unhandled error", extra={"error": type(exc).__name__})
        return problem_response(500, "an unexpected error occurred")

    return app
