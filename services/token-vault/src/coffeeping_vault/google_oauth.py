"""Google's OAuth 2.0 endpoints as the vault uses them: code exchange, refresh, revocation, userinfo.

Transient failures (timeouts, connection errors, 429 and 5xx) are retried with exponential backoff
and jitter, then reported as ``GoogleUnavailable``. ``invalid_grant`` is final and never retried.
Nothing here logs a request or response body.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import requests

from coffeeping_vault import metrics

log = logging.getLogger(__name__)
T = TypeVar("T")


class GoogleUnavailable(Exception):
    """Google did not answer usefully after the retries (timeouts, 429, 5xx)."""


class InvalidGrant(Exception):
    """The code or refresh token is expired, revoked or otherwise dead: the user must reconnect."""


class OAuthRefused(Exception):
    """Google refused the request for another reason (``error`` code only, never a secret)."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclass(frozen=True)
class TokenResponse:
    access_token: str
    expires_in: int
    scopes: tuple[str, ...]
    refresh_token: str | None


@dataclass(frozen=True)
class UserInfo:
    sub: str
    email: str


class GoogleOAuth:
    def __init__(self, client_id: str, client_secret: str, token_url: str, revoke_url: str, userinfo_url: str,
                 timeout_s: float = 10.0, attempts: int = 4, backoff_s: float = 0.2) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_url = token_url
        self.revoke_url = revoke_url
        self.userinfo_url = userinfo_url
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._http = requests.Session()

    def _with_retries(self, what: str, send: Callable[[], requests.Response]) -> requests.Response:
        for attempt in range(1, self.attempts + 1):
            try:
                response = send()
            except requests.RequestException as exc:
                reason = type(exc).__name__
            else:
                if response.status_code != 429 and response.status_code < 500:
                    return response
                reason = f"http {response.status_code}"
            if attempt < self.attempts:
                delay = self.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random())
                log.warning("google call failed, retrying",
                            extra={"call": what, "reason": reason, "attempt": attempt, "retry_in_s": round(delay, 2)})
                time.sleep(delay)
        log.warning("google call failed", extra={"call": what, "reason": reason, "attempts": self.attempts})
        raise GoogleUnavailable(what)

    def _token_call(self, what: str, form: dict[str, str]) -> TokenResponse:
        body = {**form, "client_id": self.client_id, "client_secret": self.client_secret}
        response = self._with_retries(what, lambda: self._http.post(self.token_url, data=body, timeout=self.timeout_s))
        data = _json(response)
        if response.status_code != 200:
            error = str(data.get("error") or f"http_{response.status_code}")[:64]
            if error == "invalid_grant":
                raise InvalidGrant(what)
            raise OAuthRefused(error)
        token = data.get("access_token")
        if not isinstance(token, str) or not token:
            raise OAuthRefused("no_access_token")
        try:
            expires_in = int(data.get("expires_in", 3600))
        except (TypeError, ValueError):
            expires_in = 3600
        refresh = data.get("refresh_token")
        return TokenResponse(
            access_token=token,
            expires_in=expires_in,
            scopes=tuple(str(data.get("scope", "")).split()),
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        )

    def exchange_code(self, code: str, code_verifier: str, redirect_uri: str) -> TokenResponse:
        return _measured("exchange", lambda: self._exchange_code(code, code_verifier, redirect_uri))

    def _exchange_code(self, code: str, code_verifier: str, redirect_uri: str) -> TokenResponse:
        return self._token_call("exchange", {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": code_verifier,
            "redirect_uri": redirect_uri,
        })

    def refresh(self, refresh_token: str, scopes: tuple[str, ...] = ()) -> TokenResponse:
        """A new access token; with ``scopes``, one for exactly that subset of the grant (Google narrows
        a token on refresh when the ``scope`` parameter asks for fewer scopes than were granted)."""
        return _measured("refresh", lambda: self._refresh(refresh_token, scopes))

    def _refresh(self, refresh_token: str, scopes: tuple[str, ...]) -> TokenResponse:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if scopes:
            form["scope"] = " ".join(scopes)
        tokens = self._token_call("refresh", form)
        if scopes and not tokens.scopes:
            # Google leaves ``scope`` out when it is what was asked for.
            tokens = TokenResponse(tokens.access_token, tokens.expires_in, scopes, tokens.refresh_token)
        return tokens

    def revoke(self, token: str) -> bool:
        """Revoke the grant; True when revoked now, False when Google says it already was (400)."""
        return _measured("revoke", lambda: self._revoke(token))

    def _revoke(self, token: str) -> bool:
        response = self._with_retries("revoke", lambda: self._http.post(
            self.revoke_url, data={"token": token}, timeout=self.timeout_s))
        if response.status_code == 200:
            return True
        if response.status_code == 400:
            return False
        raise OAuthRefused(f"revoke_http_{response.status_code}")

    def userinfo(self, access_token: str) -> UserInfo:
        return _measured("userinfo", lambda: self._userinfo(access_token))

    def _userinfo(self, access_token: str) -> UserInfo:
        response = self._with_retries("userinfo", lambda: self._http.get(
            self.userinfo_url, headers={"Authorization": f"Bearer {access_token}"}, timeout=self.timeout_s))
        data = _json(response)
        email = data.get("email")
        if response.status_code != 200 or not isinstance(email, str) or "@" not in email:
            raise OAuthRefused("userinfo_failed")
        return UserInfo(sub=str(data.get("sub") or data.get("id") or ""), email=email)


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, InvalidGrant):
        return "invalid_grant"
    if isinstance(exc, OAuthRefused):
        return "refused"
    return "unavailable" if isinstance(exc, GoogleUnavailable) else "error"


def _measured(call: str, run: Callable[[], T]) -> T:
    """One call to Google (its retries included), counted by outcome and timed."""
    return metrics.measured(metrics.GOOGLE_CALLS, metrics.GOOGLE_DURATION, call, _outcome, run)


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
