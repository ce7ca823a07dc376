"""The formats of the API's field values: field errors, resource ids, RFC 3339 times in and out.

Shared by the resource modules (``contacts``, ``imports``, ``sequences``, ``pages``, ``export``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from coffeeping_mailer.errors import not_found


def err(field: str, message: str) -> dict[str, str]:
    """One field violation of an ``Invalid`` refusal."""
    return {"field": field, "message": message}


def parse_id(value: Any, resource_type: str) -> uuid.UUID:
    """A resource id from the request; anything that is not a UUID is a resource that does not exist."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise not_found(resource_type, str(value)) from None


def parse_time(value: Any) -> dt.datetime:
    """An RFC 3339 date-time with its offset, in UTC; ``ValueError`` says what is wrong."""
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 date-time")
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError("must be an RFC 3339 date-time such as 2026-12-01T09:00:00Z") from None
    if when.tzinfo is None:
        raise ValueError("must carry a UTC offset (Z or +hh:mm)")
    return when.astimezone(dt.UTC)


def iso(value: dt.datetime | None) -> str | None:
    """A stored time as the API shows it: UTC, ``Z``; None stays None."""
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
