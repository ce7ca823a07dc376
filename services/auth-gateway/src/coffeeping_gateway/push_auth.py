"""Who may push: the OIDC token that Cloud Pub/Sub sends with each push, verified as Google signs it.

A push subscription with authentication sends ``Authorization: Bearer <JWT>``, signed by Google (RS256,
keys at ``GOOGLE_OIDC_CERTS_URL``, a JSON map of key id to PEM certificate), with ``iss`` Google's,
``aud`` the audience configured on the subscription and ``email`` its service account. google-auth
checks the signature, ``exp`` and ``iat`` (``google.auth.jwt.decode``, as ``id_token.verify_token``
does); the certificates are cached for as long as Google's ``Cache-Control`` allows, so a push costs no
request to Google. A token that cannot be verified is :class:`Unauthenticated` (401); a genuine token
minted for another audience, issuer or account is :class:`Forbidden` (403).
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import google.auth.exceptions
import requests
from google.auth import jwt

ISSUERS = ("accounts.google.com", "https://accounts.google.com")
_MAX_AGE = re.compile(r"max-age=(\d+)")
_REFETCH_AFTER_S = 60  # an unknown key id refetches the certificates at most this often
_SKEW_S = 10


class Unauthenticated(Exception):
    """No token, or one whose signature, format or lifetime does not verify."""


class Forbidden(Exception):
    """A verified token that was not minted for our push subscription."""


class CertificatesUnavailable(Exception):
    """Google's certificates could not be fetched: the push is refused for now (Pub/Sub retries it)."""


class PushVerifier:
    def __init__(self, certs_url: str, audience: str, service_account: str, timeout_s: float = 5.0) -> None:
        self.certs_url = certs_url
        self.audience = audience
        self.service_account = service_account
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._certs: dict[str, str] = {}
        self._expires = 0.0
        self._fetched = 0.0

    def verify(self, authorization: str) -> None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token or len(token) > 8192:
            raise Unauthenticated("no bearer token")
        claims = self._decode(token.strip())
        if claims.get("iss") not in ISSUERS:
            raise Forbidden("issuer")
        if claims.get("aud") != self.audience:
            raise Forbidden("audience")
        if claims.get("email") != self.service_account or claims.get("email_verified") is not True:
            raise Forbidden("service account")

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.decode_header(token)
        except (ValueError, google.auth.exceptions.GoogleAuthError):
            raise Unauthenticated("malformed token") from None
        certs = self._certificates(str(header.get("kid", "")))
        try:
            claims: dict[str, Any] = jwt.decode(token, certs=certs, clock_skew_in_seconds=_SKEW_S)
        except (ValueError, google.auth.exceptions.GoogleAuthError):
            raise Unauthenticated("signature, format or lifetime") from None
        if "exp" not in claims:
            raise Unauthenticated("no expiry")
        return claims

    def _certificates(self, kid: str) -> dict[str, str]:
        now = time.monotonic()
        with self._lock:
            stale = now >= self._expires
            unknown = kid not in self._certs and now - self._fetched >= _REFETCH_AFTER_S
            if stale or unknown:
                self._fetch(now)
            return dict(self._certs)

    def _fetch(self, now: float) -> None:
        try:
            reply = requests.get(self.certs_url, timeout=self.timeout_s)
            reply.raise_for_status()
            certs = reply.json()
        except (requests.RequestException, ValueError):
            if self._certs:
                return  # keep verifying with the keys we have
            raise CertificatesUnavailable(self.certs_url) from None
        if not isinstance(certs, dict):
            raise CertificatesUnavailable(self.certs_url)
        match = _MAX_AGE.search(reply.headers.get("Cache-Control", ""))
        self._certs = {str(k): str(v) for k, v in certs.items()}
        self._fetched = now
        self._expires = now + (int(match.group(1)) if match else 3600)
