"""Clerk session-token verification: the only place a session token is checked.

Every check is explicit (Clerk's own SDK skips the issuer check): RS256 only, a key from the
configured JWKS, ``iss`` equal to ``CLERK_ISSUER``, ``azp`` present and in the allowed parties (the
settings require them outside development), ``exp``/``nbf``/``iat``/``sub``/``sid`` present, 5 s
leeway. Every failure is the same 401. Nothing here logs a token, a header or a claim value.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
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
    """The issuer's keys, refetched when stale or when an unknown ``kid`` appears, at a bounded rate.

    Every fetch attempt, whatever its cause and outcome, spends a token from one bucket (``burst``
    attempts, refilled one per ``refill_s``): a rotated key is picked up at once, while a flood of
    made-up kids or a JWKS outage costs the issuer at most ``burst`` attempts plus one per ``refill_s``
    in each process, never one per request. A failed fetch keeps the keys already known, which go on
    verifying (a request holding one never waits for a fetch); only a kid never seen is refused.
    Only one fetch runs at a time; requests that need its result wait for it.
    """

    def __init__(self, url: str, lifespan_s: float = 300.0, burst: int = 3, refill_s: float = 10.0,
                 timeout_s: float = 3.0) -> None:
        self.url = url
        self.lifespan_s = lifespan_s
        self.burst = burst
        self.refill_s = refill_s
        self.timeout_s = timeout_s
        self.attempts = 0  # fetch attempts since start (logged with each one)
        self.failures = 0  # consecutive failed attempts
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._tokens = float(burst)
        self._last_refill = time.monotonic()
        self._lock = threading.Lock()
        self._session = requests.Session()

    def _stale(self) -> bool:
        return self._fetched_at is None or time.monotonic() - self._fetched_at > self.lifespan_s

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

    def _refresh_if_allowed(self) -> None:
        """One fetch attempt if the bucket allows it (call with the lock held); failures keep the old keys."""
        if not self._take_token():
            return
        self.attempts += 1
        try:
            self._fetch()
        except (requests.RequestException, ValueError, jwt.PyJWTError) as exc:
            self.failures += 1
            log.warning("jwks fetch failed", extra={"error": type(exc).__name__, "attempts": self.attempts,
                                                    "consecutive_failures": self.failures,
                                                    "known_keys": len(self._keys)})
            return
        self.failures = 0
        log.info("jwks fetched", extra={"attempts": self.attempts, "known_keys": len(self._keys)})

    def key_for(self, kid: str) -> Any:
        if not _KID.match(kid):
            raise InvalidToken("malformed kid")
        key = self._keys.get(kid)
        if key is not None and not self._stale():
            return key
        # A known key never waits behind a fetch (which may hang until its timeout in an outage).
        if not self._lock.acquire(blocking=key is None):
            return key
        try:
            key = self._keys.get(kid)
            if key is None or self._stale():
                self._refresh_if_allowed()
                key = self._keys.get(kid)
        finally:
            self._lock.release()
        if key is None:
            raise InvalidToken("unknown kid")
        return key


class VerifiedTokens:
    """Tokens this process has verified, each with its ``exp``: a client sends the same session token
    with every request of its minute, and the signature check is most of a request's CPU here.

    Only successes are kept, never past ``exp`` plus the leeway; a token is its own key, so a token that
    differs by one byte is verified in full. At most ``size`` entries (least recently used go first).
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[Session, float]] = OrderedDict()

    def get(self, token: str) -> Session | None:
        with self._lock:
            entry = self._entries.get(token)
            if entry is None:
                return None
            if time.time() > entry[1] + LEEWAY_S:
                del self._entries[token]
                return None
            self._entries.move_to_end(token)
            return entry[0]

    def put(self, token: str, session: Session, expires_at: float) -> None:
        with self._lock:
            self._entries[token] = (session, expires_at)
            self._entries.move_to_end(token)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


class ClerkVerifier:
    def __init__(self, jwks: JwksCache, issuer: str, authorized_parties: tuple[str, ...]) -> None:
        self.jwks = jwks
        self.issuer = issuer
        self.authorized_parties = frozenset(authorized_parties)
        self.verified = VerifiedTokens()

    def verify(self, token: str) -> Session:
        if not token or len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            raise InvalidToken("malformed")
        session = self.verified.get(token)
        if session is None:
            session, expires_at = self._verify(token)
            self.verified.put(token, session, expires_at)
        return session

    def _verify(self, token: str) -> tuple[Session, float]:
        """Every check, in full: the session and the token's ``exp``."""
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
        # Empty only in development (see config): then any Clerk frontend's token is accepted.
        if self.authorized_parties and claims.get("azp") not in self.authorized_parties:
            raise InvalidToken("azp")
        sub, sid, iat = claims.get("sub"), claims.get("sid"), claims.get("iat")
        if not isinstance(sub, str) or not re.fullmatch(r"[A-Za-z0-9_\-]{1,128}", sub):
            raise InvalidToken("sub")
        if not isinstance(sid, str) or not sid:
            raise InvalidToken("sid")
        if not isinstance(iat, int) or iat > time.time() + LEEWAY_S:
            raise InvalidToken("iat")
        return Session(user_id=sub, session_id=sid, issued_at=iat), float(claims["exp"])
