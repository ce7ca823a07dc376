"""Tombstones: what a service remembers of a user it has purged, without remembering who it was.

A tombstone is ``HMAC-SHA256(key, user_id)`` in ``<schema>.tombstones``. The key (``TOMBSTONE_KEY``)
is a deployment secret, so the table cannot be reversed by hashing candidate user ids. Every consumer
and every write path checks it: an event for a buried user is acknowledged and dropped (whether it
comes late, redelivered or replayed from a dead-letter queue), and nothing is written for that user
again. A deletion is final: a buried user id never gets an account back.

The table is not keyed by ``user_id`` and holds nothing that names anybody, so it has no row-level
security policy; the service's application role reads and inserts it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, bindparam, exists, select
from sqlalchemy.dialects.postgresql import insert

from .config import secret_text, setting
from .db import validate_user_id
from .tables import schema_tables


@dataclass(frozen=True)
class TombstoneSettings:
    # The same value in every service of a deployment, never rotated: a new key forgets the tombstones.
    tombstone_secret: str = setting("TOMBSTONE_KEY", secret_text(32), secret=True)

    @property
    def tombstone_key(self) -> bytes:
        return self.tombstone_secret.encode()


def subject(key: bytes, user_id: str) -> bytes:
    """The non-identifying name of a user in the tombstone table."""
    return hmac.new(key, validate_user_id(user_id).encode(), hashlib.sha256).digest()


def bury(conn: Connection, schema: str, key: bytes, user_id: str) -> None:
    """Record (idempotently, inside the caller's transaction) that ``user_id`` is gone for good."""
    tombstones = schema_tables(schema).tombstones
    conn.execute(insert(tombstones).values(subject=subject(key, user_id)).on_conflict_do_nothing())


@functools.cache
def _buried_query(schema: str) -> Select[Any]:
    """Built once per schema: a statement object memoises its cache key."""
    tombstones = schema_tables(schema).tombstones
    return select(exists().where(tombstones.c.subject == bindparam("subject", type_=tombstones.c.subject.type)))


def is_buried(conn: Connection, schema: str, key: bytes, user_id: str) -> bool:
    buried: bool = conn.execute(_buried_query(schema), {"subject": subject(key, user_id)}).scalar_one()
    return buried


__all__ = ["TombstoneSettings", "bury", "is_buried", "subject"]
