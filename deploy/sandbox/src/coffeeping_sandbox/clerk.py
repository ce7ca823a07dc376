"""Clerk stand-in: a JWKS endpoint and a minting API for Clerk-shaped RS256 session tokens.

Endpoints (on its own HTTP server):
  GET  /.well-known/jwks.json (also /v1/jwks)   the key set; every fetch is counted
  POST /_sandbox/tokens  {"user_id", "lifetime_s"?, "azp"?, "sid"?, "iat"?, "claims"?, "omit"?}
  POST /_sandbox/rotate  {"keep_old"?: true}     new signing key with a new kid
  GET  /_sandbox/stats                           {"jwks_fetches": n, "tokens_minted": n, "kids": [...]}
  POST /_sandbox/reset

CLI: ``python -m coffeeping_sandbox.clerk mint --user user_123 [--url http://127.0.0.1:8701]``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import flask
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from .control import Control, InjectedFault

DEFAULT_AZP = "http://localhost:3000"
DEFAULT_LIFETIME_S = 60
CLAIMS = ("iss", "sub", "sid", "azp", "iat", "nbf", "exp", "v")


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

        _install_json_errors(app)
        return app


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
