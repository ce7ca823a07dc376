"""What the accounts service does, independent of how it is called."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Engine, literal, select
from sqlalchemy.dialects.postgresql import insert

from coffeeping.common.db import user_tx
from coffeeping.common.notified_cache import NotifiedCache
from coffeeping_accounts import deletions
from coffeeping_accounts.models import deletions as deletion_rows
from coffeeping_accounts.models import users


@dataclass(frozen=True)
class User:
    user_id: str
    created_at: dt.datetime


class KnownUsers(NotifiedCache[User]):
    """The users this process has seen and whose deletion nobody has requested: a user's existence and
    creation time never change, and an accepted deletion notifies every process (``deletions``), so
    ``GetMe`` answers them from memory (see ``coffeeping.common.notified_cache``)."""

    def __init__(self, dsn: str | None, max_age_s: float = 300.0, size: int = 100_000) -> None:
        super().__init__(dsn, deletions.USERS_CHANNEL, max_age_s, size)


def me(engine: Engine, known: KnownUsers, user_id: str) -> User:
    """``get_or_create_user``, answered from ``known`` once the user has been seen."""
    user = known.get(user_id, "")
    if user is None:
        generation = known.generation()
        user = get_or_create_user(engine, user_id)
        known.put(user_id, "", user, generation)
    return user


def get_or_create_user(engine: Engine, user_id: str) -> User:
    """The user's record, created on first sight (concurrent first requests create one row).

    Raises ``AccountDeleted`` once a deletion of the account was accepted, so that a sign-in never
    recreates data: a deleted user id never gets an account back (every service keeps its tombstone).
    The common case (a known user, no deletion) is one query after the user is set.
    """
    deleting = (
        select(deletion_rows.c.deletion_id)
        .where(deletion_rows.c.subject_hash == deletions.subject_hash(user_id))
        .exists()
    )
    with user_tx(engine, user_id) as conn:
        row = conn.execute(
            select(users.c.user_id, users.c.created_at, deleting.label("deleting"))
            .select_from(select(literal(1).label("one")).subquery().outerjoin(users, users.c.user_id == user_id))
        ).one()
        if row.deleting:
            raise deletions.AccountDeleted()
        if row.user_id is not None:
            return User(row.user_id, row.created_at)
        conn.execute(insert(users).values(user_id=user_id).on_conflict_do_nothing(index_elements=["user_id"]))
        row = conn.execute(select(users.c.user_id, users.c.created_at).where(users.c.user_id == user_id)).one()
    return User(row.user_id, row.created_at)


def find_user(engine: Engine, user_id: str) -> User | None:
    """The user's record without creating it; ``AccountDeleted`` once its deletion was accepted."""
    with user_tx(engine, user_id) as conn:
        if deletions.deleted(conn, user_id):
            raise deletions.AccountDeleted()
        row = conn.execute(select(users.c.user_id, users.c.created_at).where(users.c.user_id == user_id)).first()
    return User(row.user_id, row.created_at) if row else None
