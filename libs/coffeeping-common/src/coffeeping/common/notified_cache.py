"""Per-user values in memory that every process forgets the moment any process changes them.

A service keeps here what it would otherwise read from PostgreSQL on every call (the vault: access
tokens and grant views; accounts: the users it has seen). Every change to such a value, in any process
or by hand, fires ``NOTIFY <channel>, '<user id>'`` in the changing transaction (a trigger or an
explicit ``pg_notify``); each process listens on its own connection and drops that user's entries, so
the others stop serving within the notification's delivery time (milliseconds). The process that made
the change calls ``invalidate`` itself after its commit.

The cache serves only while its listener is connected: when the connection drops, everything is
forgotten and readers go to the database until it is back, so a missed notification can never keep a
changed value in service. ``max_age_s`` bounds what a notification lost some other way could cost.

A reader takes ``generation()`` before it reads the database and hands it to ``put``; any invalidation
in between bumps the generation and the put is ignored, so a read that raced a change never caches
what the change replaced.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from typing import Generic, TypeVar

import psycopg
from sqlalchemy import Select, func, select

log = logging.getLogger(__name__)

V = TypeVar("V")
_CHANNEL = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def notify(channel: str, user_id: str) -> Select[tuple[str]]:
    """The statement that tells every process's cache on ``channel`` to forget ``user_id`` (delivered on
    commit; run it in the transaction that makes the change)."""
    return select(func.pg_notify(channel, user_id))


class NotifiedCache(Generic[V]):
    def __init__(self, dsn: str | None, channel: str, max_age_s: float = 60.0, size: int = 100_000) -> None:
        if not _CHANNEL.match(channel):
            raise ValueError("invalid channel name")
        self.dsn = dsn
        self.channel = channel
        self.max_age_s = max_age_s
        self.size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, str], tuple[V, float]] = OrderedDict()
        self._by_user: dict[str, set[str]] = {}
        self._generation = 0
        self._live = False
        self.connected = threading.Event()  # set while the listener holds its LISTEN

    # -- reads and writes -----------------------------------------------------------------------------
    def generation(self) -> int:
        return self._generation

    def get(self, user_id: str, key: str) -> V | None:
        if not self._live:
            return None
        with self._lock:
            item = self._items.get((user_id, key))
            if item is None:
                return None
            if item[1] <= time.monotonic():
                self._drop((user_id, key))
                return None
            self._items.move_to_end((user_id, key))
            return item[0]

    def put(self, user_id: str, key: str, value: V, generation: int, ttl_s: float | None = None) -> None:
        """Keep ``value`` for ``ttl_s`` seconds (at most ``max_age_s``) unless anything was invalidated
        since ``generation`` was taken."""
        ttl = self.max_age_s if ttl_s is None else min(self.max_age_s, ttl_s)
        if ttl <= 0:
            return
        with self._lock:
            if not self._live or generation != self._generation:
                return
            self._items[(user_id, key)] = (value, time.monotonic() + ttl)
            self._items.move_to_end((user_id, key))
            self._by_user.setdefault(user_id, set()).add(key)
            while len(self._items) > self.size:
                self._drop(next(iter(self._items)))

    def invalidate(self, user_id: str) -> None:
        with self._lock:
            self._generation += 1
            for key in self._by_user.pop(user_id, ()):
                self._items.pop((user_id, key), None)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._items.clear()
            self._by_user.clear()

    def _drop(self, item_key: tuple[str, str]) -> None:
        self._items.pop(item_key, None)
        keys = self._by_user.get(item_key[0])
        if keys is not None:
            keys.discard(item_key[1])
            if not keys:
                del self._by_user[item_key[0]]

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
        """Listen for changes until ``stop``; serve from memory only while listening."""
        if not self.dsn or self.max_age_s <= 0:
            return
        backoff = 0.5
        while not stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5,
                                     application_name=f"{self.channel}-listener") as conn:
                    # Plain SQL on purpose: LISTEN and the ping below are commands of this psycopg connection
                    # (outside SQLAlchemy), not queries on our tables; the channel name is checked above.
                    conn.execute(f"LISTEN {self.channel}")
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
                log.warning("cache listener lost its connection; reading the database",
                            extra={"channel": self.channel, "error": type(exc).__name__, "retry_in_s": backoff})
            finally:
                self._set_live(False)
            stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)
