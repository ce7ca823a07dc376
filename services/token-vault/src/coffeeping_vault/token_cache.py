"""What the vault serves from memory, so a steady-state GetAccessToken or GetGrantInfo touches no database.

One ``NotifiedCache`` per process on ``vault_grant_changed``: a trigger (migration 0003) fires it on
every change to a grant or a scoped token, and the vault fires it itself when it buries a user. Access
tokens are kept per (user, requested scope set) until 5 minutes before they expire; the grant's view
(connected, address, scopes, status) under ``GRANT_VIEW``. Neither is kept longer than ``max_age_s``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from coffeeping.common.notified_cache import NotifiedCache

CHANNEL = "vault_grant_changed"
GRANT_VIEW = "#grant"  # never a scope set's key (those are scope URLs)


@dataclass(frozen=True)
class CachedToken:
    access_token: str = field(repr=False)
    expires_at: dt.datetime
    email: str
    scopes: tuple[str, ...]


class TokenCache(NotifiedCache[Any]):
    def __init__(self, dsn: str | None, fresh_for: dt.timedelta, max_age_s: float = 60.0, size: int = 100_000
                 ) -> None:
        super().__init__(dsn, CHANNEL, max_age_s, size)
        self.fresh_for = fresh_for

    def put_token(self, user_id: str, scope_key: str, token: CachedToken, generation: int) -> None:
        """Keep ``token`` while it has more than ``fresh_for`` left."""
        usable_s = (token.expires_at - self.fresh_for - dt.datetime.now(dt.UTC)).total_seconds()
        self.put(user_id, scope_key, token, generation, ttl_s=usable_s)
