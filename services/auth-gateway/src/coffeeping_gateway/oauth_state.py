"""Signed OAuth ``state`` and the browser-binding cookie of the Gmail connection flow.

``begin`` makes three things:

* a PKCE pair: the S256 challenge goes into the consent URL; the verifier never appears in any URL;
* a browser-binding cookie (HttpOnly, Secure, SameSite=Lax, scoped to the callback path) holding the
  verifier sealed with AES-256-GCM under a key derived from ``OAUTH_STATE_SECRET``, bound to the user;
* the ``state``: ``base64url(payload) "." base64url(HMAC-SHA256(payload))`` where the payload names
  the user, a single-use random nonce, the expiry (10 minutes) and a hash of the cookie value.

``verify`` checks the MAC in constant time before reading anything, then the user, the expiry and
the cookie (a foreign browser has none, or another one). Single use is enforced by the caller, which
records the nonce in the token vault (one atomic insert across every worker and process).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

STATE_TTL_S = 600
COOKIE_NAME = "cp_gmail_oauth"
COOKIE_PATH = "/v1/gmail/callback"
MAX_STATE_CHARS = 1024
MAX_COOKIE_CHARS = 1024
_STATE_CONTEXT = b"coffeeping.oauth-state.v1|"


class InvalidState(Exception):
    """The state or cookie is refused; the message says why, for logs only."""


@dataclass(frozen=True)
class Pending:
    state: str
    cookie: str = field(repr=False)
    code_challenge: str
    nonce: str
    expires_at: int


@dataclass(frozen=True)
class Verified:
    nonce: str
    expires_at: int
    code_verifier: str = field(repr=False)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(secret: str, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"coffeeping-gateway", info=purpose).derive(secret.encode())


def code_challenge(verifier: str) -> str:
    return _b64(hashlib.sha256(verifier.encode()).digest())


class StateSigner:
    def __init__(self, secret: str, ttl_s: int = STATE_TTL_S) -> None:
        self._mac_key = _derive(secret, b"oauth state mac v1")
        self._seal = AESGCM(_derive(secret, b"oauth cookie seal v1"))
        self.ttl_s = ttl_s

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._mac_key, _STATE_CONTEXT + body.encode(), hashlib.sha256).digest())

    def begin(self, user_id: str, now: float | None = None) -> Pending:
        issued = int(time.time() if now is None else now)
        verifier = secrets.token_urlsafe(64)  # 86 characters of [A-Za-z0-9_-]: a valid PKCE verifier
        iv = os.urandom(12)
        sealed = self._seal.encrypt(iv, json.dumps({"v": verifier, "r": _b64(os.urandom(16))}).encode(),
                                    b"cookie|" + user_id.encode())
        cookie = _b64(iv + sealed)
        nonce = secrets.token_urlsafe(24)
        expires_at = issued + self.ttl_s
        payload = {"u": user_id, "n": nonce, "e": expires_at, "c": _b64(hashlib.sha256(cookie.encode()).digest())}
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return Pending(body + "." + self._mac(body), cookie, code_challenge(verifier), nonce, expires_at)

    def verify(self, state: str, cookie: str | None, user_id: str, now: float | None = None) -> Verified:
        if not state or len(state) > MAX_STATE_CHARS or state.count(".") != 1:
            raise InvalidState("malformed")
        body, signature = state.split(".")
        if not hmac.compare_digest(self._mac(body).encode(), signature.encode()):
            raise InvalidState("signature")
        try:
            payload = json.loads(_unb64(body))
            owner, nonce, expires_at, binding = payload["u"], payload["n"], int(payload["e"]), payload["c"]
        except (ValueError, KeyError, TypeError):
            raise InvalidState("malformed payload") from None
        if not isinstance(owner, str) or not hmac.compare_digest(owner.encode(), user_id.encode()):
            raise InvalidState("another user")
        if expires_at <= (time.time() if now is None else now):
            raise InvalidState("expired")
        if not cookie or len(cookie) > MAX_COOKIE_CHARS:
            raise InvalidState("no browser binding")
        expected = _b64(hashlib.sha256(cookie.encode()).digest())
        if not isinstance(binding, str) or not hmac.compare_digest(expected.encode(), binding.encode()):
            raise InvalidState("another browser")
        try:
            raw = _unb64(cookie)
            opened = json.loads(self._seal.decrypt(raw[:12], raw[12:], b"cookie|" + user_id.encode()))
            verifier = opened["v"]
        except (ValueError, KeyError, TypeError, InvalidTag):
            raise InvalidState("browser binding unreadable") from None
        if not isinstance(nonce, str) or not isinstance(verifier, str):
            raise InvalidState("malformed payload")
        return Verified(nonce, expires_at, verifier)
