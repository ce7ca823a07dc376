"""The Flask application: security headers, authentication, problem+json errors, request ids."""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import RequestRedirect

from coffeeping.common.logging import accepted_request_id, request_id_var
from coffeeping.common.tracing import trace_flask
from coffeeping_gateway import console, metrics, views
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
    trace_flask(app)  # first: its span is open before any of _serve's hooks can answer early
    _serve(app, settings)
    if settings.console_url:
        if not settings.clerk_publishable_key:
            log.warning("CONSOLE_URL without CLERK_PUBLISHABLE_KEY: the console refreshes sessions at "
                        "CLERK_FRONTEND_API (the sandbox's Clerk stand-in), not with Clerk's frontend script")
        # The console is an app of its own on the same origin, so the API's routes stay exactly the ones
        # its OpenAPI document lists; it shares the API's services, settings and session checks.
        pages = Flask("coffeeping_gateway.console", static_folder=None)
        pages.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
        pages.extensions = app.extensions
        console.install(pages, settings)
        trace_flask(pages)
        _serve(pages, settings)
        app.wsgi_app = _Dispatch(app, pages)  # type: ignore[method-assign]
    return app


class _Dispatch:
    """The API's own routes (and any address under /v1/) to the API; every other address to the console."""

    def __init__(self, api: Flask, pages: Flask) -> None:
        self.api, self.api_wsgi, self.pages = api, api.wsgi_app, pages

    def _api_routes(self, environ: dict[str, Any]) -> bool:
        if environ.get("PATH_INFO", "").startswith("/v1/"):
            return True
        try:
            self.api.url_map.bind_to_environ(environ).match()
        except (RequestRedirect, MethodNotAllowed):
            return True
        except HTTPException:
            return False
        return True

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        serve = self.api_wsgi if self._api_routes(environ) else self.pages.wsgi_app
        return serve(environ, start_response)


def _serve(app: Flask, settings: Settings) -> None:
    """Request ids, body limits, authentication, the cross-site check, headers, access log and errors."""

    @app.before_request
    def start() -> Response | None:
        g.started = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        request_id_var.set(accepted_request_id(incoming))
        if request.content_length is not None and request.content_length > settings.max_body_bytes:
            # Refused before anything reads it, whatever the route (Flask only checks on read).
            return refuse(413, "the request body is too large")
        if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
            return Response(status=204)
        view = app.view_functions.get(request.endpoint or "")
        if view is None or getattr(view, "public", False):
            return None
        token, from_cookie = _session_token()
        try:
            g.session = app.extensions["coffeeping.verifier"].verify(token or "")
        except InvalidToken as exc:
            if receipt_user := console.receipt_user(view):
                g.receipt_user = receipt_user
                return None
            log.info("authentication refused", extra={"reason": str(exc)})
            if console.navigation(view):
                return console.to_sign_in()
            return problem_response(401, "a valid session token is required",
                                    headers={"WWW-Authenticate": "Bearer"})
        if _cross_site(from_cookie, settings.cors_origins):
            log.info("cross-site request refused", extra={"method": request.method, "route": request.url_rule.rule
                                                          if request.url_rule else "unmatched"})
            return refuse(403, "a request authenticated by the session cookie must come from the app's own origin")
        return None

    def refuse(status: int, detail: str = "", **extra: Any) -> Response:
        """A problem document, or for a person's browser on the console, a page saying the same."""
        if console.error_pages(app.view_functions.get(request.endpoint or "")):
            return console.error_page(status, detail)
        return problem_response(status, detail, **extra)

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
        metrics.observe(rule, request.method, response.status_code, elapsed_ms / 1000)
        log.info("request", extra={"method": request.method, "route": rule, "status": response.status_code,
                                   "ms": elapsed_ms})
        return response

    @app.errorhandler(Problem)
    def on_problem(exc: Problem) -> Response:
        return refuse(exc.status, exc.detail, **exc.extra)

    @app.errorhandler(HTTPException)
    def on_http(exc: HTTPException) -> Response:
        status = exc.code or 500
        detail = {413: "the request body is too large", 404: "no such resource",
                  405: "method not allowed for this resource"}.get(status, "")
        response = refuse(status, detail)
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def on_error(exc: Exception) -> Any:
        log.error("unhandled error", exc_info=exc)
        return refuse(500, "an unexpected error occurred")
