"""Clerk stand-in: a JWKS endpoint and a minting API for Clerk-shaped RS256 session tokens, and the
browser side of Clerk for the console: a hosted sign-in page and the session refresh its script calls.

Endpoints (on its own HTTP server):
  GET  /.well-known/jwks.json (also /v1/jwks)   the key set; every fetch is counted
  GET  /sign-in?redirect_url=URL                 the hosted sign-in page (any email address signs in; the
  POST /sign-in  form {email, redirect_url}      same address is always the same user), then back to URL
  POST /v1/client/token                          a fresh 60 s session token for the browser's session
  POST /v1/client/sign-out                       ends the browser's session
  POST /_sandbox/tokens  {"user_id", "lifetime_s"?, "azp"?, "sid"?, "iat"?, "claims"?, "omit"?}
  POST /_sandbox/rotate  {"keep_old"?: true}     new signing key with a new kid
  GET  /_sandbox/stats                           {"jwks_fetches": n, "tokens_minted": n, "kids": [...]}
  POST /_sandbox/reset

CLI: ``python -m coffeeping_sandbox.clerk mint --user user_123 [--url http://127.0.0.1:8701]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import flask
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from markupsafe import escape

from .control import Control, InjectedFault

DEFAULT_AZP = "http://localhost:3000"
DEFAULT_LIFETIME_S = 60
CLAIMS = ("iss", "sub", "sid", "azp", "iat", "nbf", "exp", "v")
# The browser's session with the stand-in, as Clerk's Frontend API keeps it in ``__client``.
CLIENT_COOKIE = "__client"
# Where the sign-in page may send the browser back and which pages may refresh a session: the local
# machine only, as a Clerk instance allows only its own configured origins.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")


def loopback_origin(address: str) -> str | None:
    """``scheme://host:port`` of an http(s) URL on this machine, else None."""
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or parts.hostname not in LOOPBACK_HOSTS:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def user_for(email: str) -> str:
    """The stand-in's user id for an email address: the same address always signs in as the same user."""
    return "user_" + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:24]


@dataclass
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(
            "ins_sandbox_" + secrets.token_hex(12),
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
        )

    def jwk(self) -> dict[str, Any]:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return jwk


class BadRequest(ValueError):
    pass


class ClerkSandbox:
    def __init__(
        self,
        control: Control,
        issuer: str | None = None,
        azp: str = DEFAULT_AZP,
        lifetime_s: int = DEFAULT_LIFETIME_S,
    ):
        self.control = control
        self._configured_issuer = issuer
        self.base_url: str | None = None  # set by the server once bound
        self.default_azp = azp
        self.default_lifetime_s = lifetime_s
        self._lock = threading.Lock()
        self._first_key = SigningKey.generate()
        self.reset()

    @property
    def issuer(self) -> str:
        return self._configured_issuer or self.base_url or "http://127.0.0.1:8701"

    @issuer.setter
    def issuer(self, value: str | None) -> None:
        """Set ``iss`` of later tokens; None goes back to the stand-in's own base URL."""
        self._configured_issuer = value

    def reset(self) -> None:
        with self._lock:
            self._keys: list[SigningKey] = [self._first_key]  # newest last; the newest signs
            self.jwks_fetches = 0
            self.tokens_minted = 0
            self._browser_sessions: dict[str, tuple[str, str]] = {}  # client cookie -> (user id, sid)

    @property
    def current_key(self) -> SigningKey:
        with self._lock:
            return self._keys[-1]

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [k.jwk() for k in reversed(self._keys)]}

    def rotate(self, keep_old: bool = True) -> str:
        """A new signing key (new kid); the old ones stay in the JWKS unless ``keep_old`` is false."""
        new = SigningKey.generate()
        with self._lock:
            self._keys = [*self._keys, new] if keep_old else [new]
        return new.kid

    def mint(
        self,
        user_id: str,
        lifetime_s: int | None = None,
        azp: str | None = None,
        sid: str | None = None,
        iat: int | None = None,
        claims: dict[str, Any] | None = None,
        omit: list[str] | tuple = (),
    ) -> str:
        """A session token as Clerk issues it; ``claims`` overrides or adds, ``omit`` drops (for tests)."""
        if not isinstance(user_id, str) or not user_id:
            raise BadRequest("user_id must be a non-empty string")
        lifetime = self.default_lifetime_s if lifetime_s is None else lifetime_s
        if isinstance(lifetime, bool) or not isinstance(lifetime, int):
            raise BadRequest("lifetime_s must be an integer")
        if iat is not None and (isinstance(iat, bool) or not isinstance(iat, int)):
            raise BadRequest("iat must be an integer")
        if azp is not None and not isinstance(azp, str):
            raise BadRequest("azp must be a string")
        if sid is not None and not isinstance(sid, str):
            raise BadRequest("sid must be a string")
        if claims is not None and not isinstance(claims, dict):
            raise BadRequest("claims must be an object")
        if not isinstance(omit, (list, tuple)) or not all(isinstance(c, str) for c in omit):
            raise BadRequest("omit must be a list of claim names")
        now = int(time.time()) if iat is None else iat
        payload: dict[str, Any] = {
            "azp": azp or self.default_azp,
            "exp": now + lifetime,
            "iat": now,
            "iss": self.issuer,
            "nbf": now - 5,
            "sid": sid or "sess_" + secrets.token_hex(13),
            "sub": user_id,
            "v": 2,
        }
        payload.update(claims or {})
        for c in omit:
            payload.pop(c, None)
        key = self.current_key
        with self._lock:
            self.tokens_minted += 1
        return jwt.encode(payload, key.private_key, algorithm="RS256", headers={"kid": key.kid, "typ": "JWT"})

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "jwks_fetches": self.jwks_fetches,
                "tokens_minted": self.tokens_minted,
                "kids": [k.kid for k in self._keys],
                "issuer": self.issuer,
            }

    # ---------------------------------------------------------------------------- HTTP

    def app(self) -> flask.Flask:
        app = flask.Flask("coffeeping_sandbox.clerk")
        app.config["MAX_CONTENT_LENGTH"] = 1 << 20

        def jwks_view() -> Any:
            with self._lock:
                self.jwks_fetches += 1
            try:
                self.control.enter("clerk.jwks")
            except InjectedFault as fault:
                status = fault.status if isinstance(fault.status, int) and 400 <= fault.status <= 599 else 503
                return flask.jsonify(
                    {"errors": [{"code": "injected_fault", "message": "Injected fault"}]}
                ), status
            resp = flask.jsonify(self.jwks())
            resp.headers["Cache-Control"] = "public, max-age=300"
            return resp

        app.add_url_rule("/.well-known/jwks.json", "jwks", jwks_view)
        app.add_url_rule("/v1/jwks", "jwks_v1", jwks_view)

        def body() -> dict[str, Any]:
            data = flask.request.get_json(silent=True) if flask.request.data else {}
            if not isinstance(data, dict):
                raise BadRequest("body must be a JSON object")
            return data

        @app.post("/_sandbox/tokens")
        def tokens() -> Any:
            data = body()
            token = self.mint(
                data.get("user_id"),  # type: ignore[arg-type]
                lifetime_s=data.get("lifetime_s"),
                azp=data.get("azp"),
                sid=data.get("sid"),
                iat=data.get("iat"),
                claims=data.get("claims"),
                omit=data.get("omit", ()),
            )
            return flask.jsonify({"token": token, "kid": self.current_key.kid})

        @app.post("/_sandbox/rotate")
        def rotate() -> Any:
            keep_old = body().get("keep_old", True)
            if not isinstance(keep_old, bool):
                raise BadRequest("keep_old must be a boolean")
            return flask.jsonify({"kid": self.rotate(keep_old=keep_old), **self.stats()})

        @app.get("/_sandbox/stats")
        def stats() -> Any:
            return flask.jsonify(self.stats())

        @app.post("/_sandbox/reset")
        def reset() -> Any:
            self.reset()
            return flask.jsonify({"ok": True})

        @app.errorhandler(BadRequest)
        def bad_request(err: BadRequest) -> Any:
            return flask.jsonify({"error": "bad_request", "message": str(err)}), 400

        self._browser_routes(app)
        _install_json_errors(app)
        return app

    # ------------------------------------------------------------ the browser's side (hosted sign-in)

    def sign_in(self, email: str) -> str:
        """A new browser session for the user of ``email``; the value of its ``__client`` cookie."""
        client = secrets.token_urlsafe(32)
        with self._lock:
            self._browser_sessions[client] = (user_for(email), "sess_" + secrets.token_hex(13))
        return client

    def _browser_routes(self, app: flask.Flask) -> None:
        @app.get("/sign-in")
        def sign_in_page() -> Any:
            return _sign_in_page(flask.request.args.get("redirect_url", ""))

        @app.post("/sign-in")
        def sign_in_submit() -> Any:
            email = flask.request.form.get("email", "").strip()
            back = flask.request.form.get("redirect_url", "")
            if not _EMAIL.match(email):
                return _sign_in_page(back, error="Enter an email address, like name@example.com."), 422
            response = flask.redirect(back, code=303) if loopback_origin(back) else flask.Response(
                _page("Signed in", "<h1>You are signed in</h1><p>Go back to the app.</p>"), mimetype="text/html")
            response.set_cookie(CLIENT_COOKIE, self.sign_in(email), httponly=True, samesite="Lax", path="/")
            return response

        @app.post("/v1/client/token")
        def session_token() -> Any:
            allowed = loopback_origin(flask.request.headers.get("Origin", ""))
            with self._lock:
                found = self._browser_sessions.get(flask.request.cookies.get(CLIENT_COOKIE, ""))
            if allowed is None:
                return _cors(flask.jsonify({"errors": [{"code": "origin_invalid"}]}), None), 403
            if found is None:
                return _cors(flask.jsonify({"errors": [{"code": "signed_out"}]}), allowed), 401
            user_id, sid = found
            token = self.mint(user_id, sid=sid, azp=allowed)
            return _cors(flask.jsonify({"jwt": token, "expires_in": self.default_lifetime_s}), allowed)

        @app.post("/v1/client/sign-out")
        def sign_out() -> Any:
            allowed = loopback_origin(flask.request.headers.get("Origin", ""))
            if allowed is None:
                return _cors(flask.jsonify({"errors": [{"code": "origin_invalid"}]}), None), 403
            with self._lock:
                self._browser_sessions.pop(flask.request.cookies.get(CLIENT_COOKIE, ""), None)
            response = _cors(flask.Response(status=204), allowed)
            response.delete_cookie(CLIENT_COOKIE, path="/", httponly=True, samesite="Lax")
            return response


def _cors(response: flask.Response, origin: str | None) -> flask.Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Vary"] = "Origin"
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
    return response


_STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;color:#1f2328;background:#f6f8fa;margin:0}"
    "main{max-width:26rem;margin:4rem auto;background:#fff;padding:2rem;border:1px solid #d0d7de;border-radius:8px}"
    "label{display:block;font-weight:600;margin:1rem 0 .25rem}"
    "input{width:100%;box-sizing:border-box;font:inherit;padding:.5rem;border:1px solid #57606a;border-radius:6px}"
    "button{margin-top:1rem;font:inherit;font-weight:600;padding:.5rem 1rem;border:0;border-radius:6px;"
    "background:#6e3b13;color:#fff;cursor:pointer}"
    ":focus-visible{outline:3px solid #0550ae;outline-offset:2px}.error{color:#a40e26}.note{color:#57606a}"
)


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body><main>{body}</main></body></html>")


def _sign_in_page(redirect_url: str, error: str = "") -> flask.Response:
    problem = f'<p class="error" id="email-error">{escape(error)}</p>' if error else ""
    described = ' aria-describedby="email-error" aria-invalid="true"' if error else ""
    body = (
        "<h1>Sign in to CoffeePing</h1>"
        '<p class="note">Sandbox stand-in for Clerk\'s hosted sign-in: any email address signs in, and the same '
        "address is always the same user.</p>"
        '<form method="post" action="/sign-in">'
        f'<input type="hidden" name="redirect_url" value="{escape(redirect_url)}">'
        '<label for="email">Email address</label>'
        f'<input id="email" name="email" type="email" autocomplete="email" required{described}>{problem}'
        '<button type="submit">Continue</button></form>'
    )
    return flask.Response(_page("Sign in – CoffeePing", body), mimetype="text/html")


def _install_json_errors(app: flask.Flask) -> None:
    from werkzeug.exceptions import HTTPException

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> Any:
        return flask.jsonify(
            {"error": (err.name or "error").lower().replace(" ", "_"), "message": err.description}
        ), (err.code or 500)


# ------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coffeeping_sandbox.clerk", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    mint = sub.add_parser("mint", help="print a session token minted by the running stand-in")
    mint.add_argument("--user", required=True, help="Clerk user id, e.g. user_123")
    mint.add_argument("--url", default="http://127.0.0.1:8701", help="the Clerk stand-in's base URL")
    mint.add_argument("--lifetime", type=int, default=None, help="seconds (default 60)")
    mint.add_argument("--azp", default=None)
    rot = sub.add_parser("rotate", help="rotate the signing key")
    rot.add_argument("--url", default="http://127.0.0.1:8701")
    rot.add_argument("--drop-old", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "mint":
        path, payload = "/_sandbox/tokens", {"user_id": args.user}
        if args.lifetime is not None:
            payload["lifetime_s"] = args.lifetime
        if args.azp:
            payload["azp"] = args.azp
    else:
        path, payload = "/_sandbox/rotate", {"keep_old": not args.drop_old}
    if not args.url.startswith(("http://", "https://")):
        print("error: --url must be an http(s) URL", file=sys.stderr)
        return 2
    req = urllib.request.Request(  # noqa: S310 - scheme checked above
        args.url.rstrip("/") + path,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            data = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(data["token"] if args.command == "mint" else data["kid"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
