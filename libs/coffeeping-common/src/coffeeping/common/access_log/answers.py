"""How a servicer answers the access log's RPCs when they fail: a filter or page the log cannot use is
INVALID_ARGUMENT, a database that cannot answer is UNAVAILABLE (the caller may try again)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import grpc
from sqlalchemy.exc import DBAPIError

from coffeeping.common.access_log.queries import BadRequest

log = logging.getLogger(__name__)


@contextlib.contextmanager
def answered(context: grpc.ServicerContext) -> Iterator[None]:
    try:
        yield
    except BadRequest as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except DBAPIError as exc:
        log.error("database error", extra={"operation": "access log", "error": type(exc.orig).__name__})
        context.abort(grpc.StatusCode.UNAVAILABLE, "storage unavailable")


__all__ = ["answered"]
