"""Clerk session-token verification: the only place a session token is checked.

Every check is explicit (Clerk's own SDK skips the issuer check): RS256 only, a key from the
configured JWKS, ``iss`` equal to ``CLERK_ISSUER``, ``azp`` (when present) in the allowed parties,
``exp``/``nbf``/``iat``/``sub``/``sid`` present, 5 s leeway. Every failure is the same 401.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import jwt
import requests

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 8192
LEEWAY_S = 5
_KID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
REQUIRED_CLAIMS = ["exp", "nbf", "iat", "sub", "sid", "iss"]


class InvalidToken(Exception):
    """Any reason a token is refused; the reason is logged, never answered."""


@dataclass(frozen=True)
class Session:
    user_id: str
    session_id: str
    issued_at: int


class JwksCache:
    """The issuer's keys, refetched when an unknown ``kid`` appears, at a bounded rate.

    A token bucket (``burst`` refetches, refilled one per ``refill_s``) lets a rotated key be picked
    up at once while a flood of made-up kids costs the issuer at most one fetch per ``refill_s``.
    Only one fetch runs at a time; waiting requests use its result.
    """

    def __init__(self, url: str, lifespan_s: float = 300.0, burst: int = 3, refill_s: float = 10.0,
                 timeout_s: float = 3.0) -> None:
        self.url = url
        self.lifespan_s = lifespan_s
        self.burst = burst
        self.refill_s = refill_s
        self.timeout_s = timeout_s
        self._keys: dict[str, Any] = {}
        self._fetched_at = 0.0
        self._tokens = float(burst)
        self._last_refill = time.monotonic()
        self._lock = threading.Lock()
        self._session = requests.Session()

    def _take_token(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last_refill) / self.refill_s)
        self._last_refill = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def _fetch(self) -> None:
        response = self._session.get(self.url, timeout=self.timeout_s)
        response.raise_for_status()
        keys = {}
        for jwk in jwt.PyJWKSet.from_dict(response.json()).keys:
            if jwk.key_id and jwk.key_type == "RSA":
                keys[jwk.key_id] = jwk.key
        self._keys = keys
        self._fetched_at = time.monotonic()

    def key_for(self, kid: str) -> Any:
        if not _KID.match(kid):
            raise InvalidToken("malformed kid")
        key = self._keys.get(kid)
        stale = time.monotonic() - self._fetched_at > self.lifespan_s
        if key is not None and not stale:
            return key
        with self._lock:
            key = self._keys.get(kid)
            stale = time.monotonic() - self._fetched_at > self.lifespan_s
            if key is not None and not stale:
                return key
            if stale or self._take_token():
                try:
                    self._fetch()
                except (requests.RequestException, ValueError, jwt.PyJWTError) as exc:
                    log.warning("jwks fetch failed", extra={"error": type(exc).__name__})
                    if key is not None:
                        return key  # keep serving the known key through a JWKS outage
                    raise InvalidToken("jwks unavailable") from None
            key = self._keys.get(kid)
        if key is None:
            raise InvalidToken("unknown kid")
        return key


class ClerkVerifier:
    def __init__(self, jwks: JwksCache, issuer: str, authorized_parties: tuple[str, ...]) -> None:
        self.jwks = jwks
        self.issuer = issuer
        self.authorized_parties = frozenset(authorized_parties)

    def verify(self, token: str) -> Session:
        if not token or len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            raise InvalidToken("malformed")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed header") from None
        if header.get("alg") != "RS256":
            raise InvalidToken("algorithm")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("no kid")
        key = self.jwks.key_for(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": REQUIRED_CLAIMS, "verify_aud": False, "verify_signature": True,
                         "verify_exp": True, "verify_nbf": True, "verify_iat": True, "verify_iss": True},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(type(exc).__name__) from None
        azp = claims.get("azp")
        if azp is not None and azp not in self.authorized_parties:
            raise InvalidToken("azp")
        sub, sid, iat = claims.get("sub"), claims.get("sid"), claims.get("iat")
        if not isinstance(sub, str) or not re.fullmatch(r"[A-Za-z0-9_\-]{1,128}", sub):
            raise InvalidToken("sub")
        if not isinstance(sid, str) or not sid:
            raise InvalidToken("sid")
        if not isinstance(iat, int) or iat > time.time() + LEEWAY_S:
            raise InvalidToken("iat")
        return Session(user_id=sub, session_id=sid, issued_at=iat)
