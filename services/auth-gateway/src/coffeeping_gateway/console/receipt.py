"""The deletion receipt: once an account's deletion is accepted, the browser keeps an HttpOnly cookie,
signed by the gateway, that lets it follow that deletion's progress after signing out (and after the
Clerk user is gone). It opens the deletion's status and nothing else.

The key is derived from ``OAUTH_STATE_SECRET`` under its own label, so the two never sign each other's
values.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

from flask import Response, request

from coffeeping_gateway.web import settings

COOKIE = "cp_deletion"
LIFETIME_S = 30 * 24 * 3600
_LABEL = b"coffeeping console deletion receipt v1"
_USER = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")


def _mac(payload: str) -> str:
    key = hmac.new(settings().oauth_state_secret.encode(), _LABEL, hashlib.sha256).digest()
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def issue(response: Response, user_id: str) -> None:
    payload = f"{user_id}.{int(time.time()) + LIFETIME_S}"
    response.set_cookie(COOKIE, f"{payload}.{_mac(payload)}", max_age=LIFETIME_S, path="/", secure=True,
                        httponly=True, samesite="Lax")


def holder() -> str | None:
    """The user id the request's receipt names, when it is genuine and unexpired."""
    user_id, _, rest = request.cookies.get(COOKIE, "").partition(".")
    expires, _, mac = rest.partition(".")
    if not _USER.match(user_id) or not expires.isdigit() or int(expires) < time.time():
        return None
    return user_id if hmac.compare_digest(mac, _mac(f"{user_id}.{expires}")) else None


def has_receipt() -> bool:
    return COOKIE in request.cookies
