"""What every console page shares: the blueprint, its headers (a strict Content-Security-Policy), the
assets, rendering, the way to sign in, and error pages instead of problem documents.

A view marked :func:`page` is a browser navigation: signed out, it is sent to sign in; an error answers
an HTML page (a deleted account is sent to its deletion's progress). Views not so marked (the fragments
the pages' scripts fetch) answer problem documents, as the API does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

from flask import Blueprint, Flask, Response, current_app, redirect, render_template, request, send_from_directory

from coffeeping_gateway.config import Settings, origin
from coffeeping_gateway.problems import Problem
from coffeeping_gateway.views.system import SECURITY_CONTACT as SECURITY_TXT_CONTACT
from coffeeping_gateway.web import public

F = TypeVar("F", bound=Callable[..., Any])

bp = Blueprint("console", __name__, template_folder="templates")

STATIC = Path(__file__).parent / "static"
SECURITY_CONTACT = SECURITY_TXT_CONTACT.removeprefix("mailto:")
GMAIL_CALLBACK = "gmail.callback"
# Clerk's frontend script, served by the instance's Frontend API (production only).
CLERK_JS_PATH = "/npm/@clerk/clerk-js@5/dist/clerk.browser.js"


@dataclass(frozen=True)
class Frontend:
    """The console's configuration, computed once at start-up."""

    console_url: str
    sign_in_url: str
    frontend_api: str  # where the browser's Clerk session lives (refresh and sign-out)
    publishable_key: str  # empty in development: the console's own script talks to the stand-in
    csp: str
    assets: dict[str, str]  # file name -> content hash, for cache-busting URLs

    @property
    def clerk_script(self) -> str:
        return self.frontend_api + CLERK_JS_PATH if self.publishable_key else ""


def _csp(settings: Settings, frontend_api: str, clerk_js: bool) -> str:
    """No inline script or style anywhere; forms may go on to Google's consent and Clerk's sign-in (a
    form's redirects are held to ``form-action`` too)."""
    scripts = ["'self'"] + ([origin(frontend_api)] if clerk_js else [])
    images = ["'self'"] + (["https://img.clerk.com"] if clerk_js else [])
    forms = dict.fromkeys(["'self'", origin(settings.google_auth_url), origin(settings.clerk_sign_in_url)])
    directives = {
        "default-src": ["'none'"],
        "script-src": scripts,
        "style-src": ["'self'"],
        "img-src": images,
        "connect-src": ["'self'", origin(frontend_api)],
        "form-action": list(forms),
        "frame-ancestors": ["'none'"],
        "base-uri": ["'none'"],
    }
    if clerk_js:
        directives["worker-src"] = ["'self'", "blob:"]
    return "; ".join(f"{name} {' '.join(values)}" for name, values in directives.items())


def install(app: Flask, settings: Settings) -> None:
    frontend_api = settings.console_frontend_api
    app.extensions["coffeeping.console"] = Frontend(
        console_url=settings.console_url,
        sign_in_url=settings.clerk_sign_in_url,
        frontend_api=frontend_api,
        publishable_key=settings.clerk_publishable_key,
        csp=_csp(settings, frontend_api, bool(settings.clerk_publishable_key)),
        assets={path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:12] for path in STATIC.iterdir()},
    )
    app.register_blueprint(bp)


def frontend() -> Frontend:
    return current_app.extensions["coffeeping.console"]  # type: ignore[no-any-return]


def installed() -> bool:
    return "coffeeping.console" in current_app.extensions


# ------------------------------------------------------------------------------------ view markers
def page(view: F) -> F:
    """A page a browser navigates to (see the module's docstring)."""
    view.console_page = True  # type: ignore[attr-defined]
    return view


def _wants_html() -> bool:
    """A browser asks for HTML first; an API client for anything (*/*) or JSON."""
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def navigation(view: Any) -> bool:
    """Whether a signed-out request goes to sign in: one of the console's pages, or Google's redirect
    back to the Gmail callback in a browser (a consent can outlast the 60-second session token)."""
    if not installed():
        return False
    return getattr(view, "console_page", False) or (request.endpoint == GMAIL_CALLBACK and _wants_html())


def error_pages(view: Any) -> bool:
    """Whether an error is answered as a page: on the console's own app, for its pages and for unknown
    addresses a browser asked for (its fragments and assets answer problem documents, as the API does)."""
    if "console" not in current_app.blueprints:
        return False
    return getattr(view, "console_page", False) or (view is None and _wants_html())


# --------------------------------------------------------------------------------- responses
def secure(response: Response) -> Response:
    """The console's headers. ``same-origin`` (not ``no-referrer``) so that the browser sends the
    ``Origin`` of the console's own form posts, which the cross-site check requires."""
    response.headers["Content-Security-Policy"] = frontend().csp
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


@bp.after_request
def _headers(response: Response) -> Response:
    return secure(response)


def asset(name: str) -> str:
    return f"/assets/{name}?v={frontend().assets[name]}"


@bp.get("/assets/<name>")
@public
def assets(name: str) -> Response:
    if name not in frontend().assets:
        raise Problem(404, "no such resource")
    response = send_from_directory(STATIC, name, max_age=0)
    response.headers["Cache-Control"] = "no-cache"  # revalidated by ETag; the query string busts it
    return response


@bp.app_context_processor
def _globals() -> dict[str, Any]:
    if not installed():
        return {}
    return {"asset": asset, "frontend": frontend(), "security_contact": SECURITY_CONTACT}


def render(template: str, code: int = 200, **context: Any) -> Response:
    """``template`` as an HTML response with status ``code``."""
    return Response(render_template(template, **context), status=code, mimetype="text/html")


def safe_next(target: str | None) -> str:
    """A path on this origin to come back to after signing in; anything else is the home page."""
    parts = urlsplit(target or "/")
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target or parts.netloc:
        return "/"
    return target


def to_sign_in() -> Response:
    """Signed out (or the 60-second token ran out): through the sign-in page and back here."""
    back = request.full_path.rstrip("?") if request.method == "GET" else "/"
    return redirect("/sign-in?" + urlencode({"next": safe_next(back)}), code=303)


def clerk_sign_in_href(next_path: str) -> str:
    """Clerk's hosted sign-in, coming back through the console's sign-in page. An API address (the Gmail
    callback, whose query holds Google's code) is never handed to Clerk: the settings page is instead."""
    comeback = next_path if not next_path.startswith("/v1/") else "/settings"
    redirect_url = f"{frontend().console_url}/sign-in?next={quote(comeback, safe='/')}"
    return f"{frontend().sign_in_url}?{urlencode({'redirect_url': redirect_url})}"


_TITLES = {
    403: "This request came from another site",
    404: "Page not found",
    405: "Page not found",
    409: "That can't be done right now",
    413: "That file is too large",
    429: "Too many requests",
}


def error_page(status: int, detail: str = "") -> Response:
    """An error a person can read: what happened and what to do, never a stack trace."""
    if status == 410:
        return redirect("/account/deletion", code=303)
    title = _TITLES.get(status, "Something went wrong" if status >= 500 else "That didn't work")
    response = render("error.html", code=status, title=title, status_code=status, detail=detail)
    return secure(response)
