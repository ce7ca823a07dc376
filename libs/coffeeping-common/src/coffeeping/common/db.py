"""Database engines and per-transaction row-level-security scope.

Every query a service makes runs inside ``user_tx`` (one user's rows) or ``system_tx`` (the few
infrastructure tables a worker scans across users). Both set the scope with
``set_config(name, value, true)`` inside an explicit transaction, so it ends with the transaction and
a pooled connection returned to the pool carries no user.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy
from sqlalchemy import Connection, Engine, String, bindparam, func, select

USER_SETTING = "app.user_id"
SCOPE_SETTING = "app.scope"
# Clerk user ids look like ``user_2abc...``; anything else is refused before it reaches SQL.
_USER_ID = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")
# A PostgreSQL schema name we interpolate into SQL: lower-case, no quoting needed.
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")


class InvalidUserId(ValueError):
    pass


def validate_user_id(user_id: str) -> str:
    if not isinstance(user_id, str) or not _USER_ID.match(user_id):
        raise InvalidUserId("invalid user id")
    return user_id


def check_schema(schema: str) -> str:
    if not isinstance(schema, str) or not _SCHEMA.match(schema):
        raise ValueError("invalid schema name")
    return schema


def make_engine(url: str, pool_size: int = 8, application_name: str = "coffeeping",
                pre_ping: bool = True) -> Engine:
    """A pooled engine that never opens connections beyond ``pool_size``.

    Overflow connections would be opened and closed per checkout under load, and a new PostgreSQL
    connection costs more than waiting a moment for a pooled one. ``hide_parameters``: a database
    error's text never carries the statement's values (addresses, bodies), whoever logs it.

    ``sqlalchemy.create_engine`` is looked up here, at the call: with tracing on it is the traced one
    (``tracing.setup_tracing``).
    """
    return sqlalchemy.create_engine(
        url,
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=30,
        pool_pre_ping=pre_ping,
        connect_args={"application_name": application_name, "connect_timeout": 5},
    )


# Built once: a statement object memoises its cache key, so each transaction pays only the execution.
_SET_USER = select(func.set_config(USER_SETTING, bindparam("user_id", type_=String()), True))
_SET_SYSTEM = select(func.set_config(SCOPE_SETTING, "system", True))


@contextmanager
def user_tx(engine: Engine, user_id: str, system: bool = False) -> Iterator[Connection]:
    """A transaction that can see and write only ``user_id``'s rows.

    ``system=True`` also opens the infrastructure tables (outbox, dedupe), for a consumer that
    handles one user's event and records it in the same transaction.
    """
    validate_user_id(user_id)
    with engine.begin() as conn:
        conn.execute(_SET_USER, {"user_id": user_id})
        if system:
            conn.execute(_SET_SYSTEM)
        yield conn


@contextmanager
def system_tx(engine: Engine) -> Iterator[Connection]:
    """A transaction over the infrastructure tables (outbox, job queues, dedupe) across users.

    User tables stay closed to it: their policies look at the user setting only.
    """
    with engine.begin() as conn:
        conn.execute(_SET_SYSTEM)
        yield conn
