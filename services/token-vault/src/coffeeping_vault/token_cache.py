"""Decrypted access tokens in memory, so a steady-state GetAccessToken touches no database.

An entry is kept per (user, requested scope set) until 5 minutes before the token expires, and never
longer than ``max_age_s``. Every change to a grant or a scoped token, in any vault process or by hand,
fires a PostgreSQL ``NOTIFY vault_grant_changed`` (a trigger, migration 0003); each process listens on
its own connection and drops that user's entries. A revocation, purge or ``needs_reconnect`` in one
process therefore stops the others serving within the notification's delivery time (milliseconds);
the process that made the change drops its own entries synchronously after its commit.

The cache serves only while the listener is connected: when the connection drops, everything is
forgotten and requests read the database until it is back, so a missed notification can never keep
a revoked token in service. ``max_age_s`` bounds what a notification lost some other way could cost.

A reader takes ``generation()`` before it reads the database and hands it to ``put``; any
invalidation in between bumps the generation and the put is ignored, so a read that raced a change
never caches what the change replaced.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import psycopg

log = logging.getLogger(__name__)

CHANNEL = "vault_grant_changed"


@dataclass(frozen=True)
class CachedToken:
    access_token: str = field(repr=False)
    expires_at: dt.datetime
    email: str
    scopes: tuple[str, ...]


class TokenCache:
    def __init__(self, dsn: str | None, fresh_for: dt.timedelta, max_age_s: float = 60.0, size: int = 100_000
                 ) -> None:
        self.dsn = dsn
        self.fresh_for = fresh_for
        self.max_age_s = max_age_s
        self.size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, str], tuple[CachedToken, float]] = OrderedDict()
        self._by_user: dict[str, set[str]] = {}
        self._generation = 0
        self._live = False
        self.connected = threading.Event()  # set while the listener holds its LISTEN

    # -- reads and writes -----------------------------------------------------------------------------
    def generation(self) -> int:
        return self._generation

    def get(self, user_id: str, scope_key: str) -> CachedToken | None:
        if not self._live:
            return None
        key = (user_id, scope_key)
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[1] <= time.monotonic():
                self._drop(key)
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, user_id: str, scope_key: str, token: CachedToken, generation: int) -> None:
        usable_s = (token.expires_at - self.fresh_for - dt.datetime.now(dt.UTC)).total_seconds()
        ttl = min(self.max_age_s, usable_s)
        if ttl <= 0:
            return
        key = (user_id, scope_key)
        with self._lock:
            if not self._live or generation != self._generation:
                return
            self._items[key] = (token, time.monotonic() + ttl)
            self._items.move_to_end(key)
            self._by_user.setdefault(user_id, set()).add(scope_key)
            while len(self._items) > self.size:
                self._drop(next(iter(self._items)))

    def invalidate(self, user_id: str) -> None:
        with self._lock:
            self._generation += 1
            for scope_key in self._by_user.pop(user_id, ()):
                self._items.pop((user_id, scope_key), None)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._items.clear()
            self._by_user.clear()

    def _drop(self, key: tuple[str, str]) -> None:
        self._items.pop(key, None)
        keys = self._by_user.get(key[0])
        if keys is not None:
            keys.discard(key[1])
            if not keys:
                del self._by_user[key[0]]

    def _set_live(self, live: bool) -> None:
        with self._lock:
            self._generation += 1
            self._live = live
            self._items.clear()
            self._by_user.clear()
        if live:
            self.connected.set()
        else:
            self.connected.clear()

    # -- the listener (a worker thread of the process) ------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Listen for grant changes until ``stop``; serve from memory only while listening."""
        if not self.dsn or self.max_age_s <= 0:
            return
        backoff = 0.5
        while not stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5,
                                     application_name="token-vault-cache") as conn:
                    # Plain SQL on purpose: LISTEN and the ping below are commands of this psycopg connection
                    # (outside SQLAlchemy), not queries on our tables.
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._set_live(True)
                    backoff = 0.5
                    while not stop.is_set():
                        # psycopg keeps notifications that arrive during the ping for the next call.
                        for notice in conn.notifies(timeout=0.5):
                            self.invalidate(notice.payload)
                        conn.execute("SELECT 1")  # notices a dead connection within the timeout
            except Exception as exc:  # noqa: BLE001 - any failure means "not listening": stop serving from memory
                if stop.is_set():
                    break
                log.warning("token cache listener lost its connection; serving from the database",
                            extra={"error": type(exc).__name__, "retry_in_s": backoff})
            finally:
                self._set_live(False)
            stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)
