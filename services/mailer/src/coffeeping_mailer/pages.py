"""Cursor pagination of the list calls, oldest first, by ``(created_at, id)``.

A page token is the ``(created_at, id)`` of the last row of the previous page, base64url-encoded; the
next page starts after it (a keyset, so a row inserted meanwhile never shifts the pages).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from typing import Any

from sqlalchemy import Connection, Select, Table, tuple_

from coffeeping_mailer.errors import Invalid
from coffeeping_mailer.fields import err

DEFAULT_PAGE = 50
MAX_PAGE = 100


def page_args(page_size: int, page_token: str) -> tuple[int, tuple[dt.datetime, uuid.UUID] | None]:
    """(rows per page, the position to continue after); 0 rows means the default."""
    errors = []
    limit = page_size or DEFAULT_PAGE
    if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        errors.append(err("limit", f"must be an integer from 1 to {MAX_PAGE}"))
    after = None
    if page_token:
        try:
            raw = base64.urlsafe_b64decode(page_token + "=" * (-len(page_token) % 4)).decode()
            stamp, _, ident = raw.partition("|")
            after = (dt.datetime.fromisoformat(stamp), uuid.UUID(ident))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            errors.append(err("cursor", "is not a cursor this API returned"))
    if errors:
        raise Invalid(errors)
    return limit, after


def cursor(row: Any) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def page(conn: Connection, table: Table, query: Select[Any], page_size: int,
         page_token: str) -> tuple[list[Any], str | None]:
    """One page of ``query`` (rows of ``table``, with its ``created_at`` and ``id`` selected) and the
    token of the next page, None on the last."""
    limit, after = page_args(page_size, page_token)
    if after:
        query = query.where(tuple_(table.c.created_at, table.c.id) > tuple_(*after))
    rows = list(conn.execute(query.order_by(table.c.created_at, table.c.id).limit(limit + 1)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, cursor(rows[-1]) if more and rows else None
