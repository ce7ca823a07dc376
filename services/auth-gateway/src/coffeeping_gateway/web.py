"""Helpers the views share: the signed-in session, public routes, gRPC error mapping, rate limits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import grpc
from flask import current_app, g
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from coffeeping_gateway.auth import Session
from coffeeping_gateway.clients import Clients
from coffeeping_gateway.problems import Problem

F = TypeVar("F", bound=Callable[..., Any])

# gRPC status → HTTP status for errors that are the client's (or a dependency's), never a bare 500.
_GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 422,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def public(view: F) -> F:
    """Mark a view as reachable without a session (health, docs, webhooks with their own check)."""
    view.public = True  # type: ignore[attr-defined]
    return view


def session() -> Session:
    return g.session  # type: ignore[no-any-return]


def user_id() -> str:
    return session().user_id


def clients() -> Clients:
    return current_app.extensions["coffeeping.clients"]  # type: ignore[no-any-return]


def settings() -> Any:
    return current_app.extensions["coffeeping.settings"]


ACCOUNT_DELETED = "account_deleted"
DELETION_STATUS_PATH = "/v1/account/deletion"


def _details(exc: grpc.RpcError) -> tuple[list[dict[str, str]], dict[str, str]]:
    """The field violations and the ErrorInfo (reason and metadata) a service attached to its status."""
    violations: list[dict[str, str]] = []
    info: dict[str, str] = {}
    status = rpc_status.from_call(exc) if isinstance(exc, grpc.Call) else None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [{"field": v.field, "message": v.description} for v in bad.field_violations]
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            error = error_details_pb2.ErrorInfo()
            detail.Unpack(error)
            info = {**error.metadata, "reason": error.reason}
    return violations, info


def rpc_problem(exc: grpc.RpcError) -> Problem:
    """The gateway's one mapping of a failed call to a problem; only client-meaningful details pass."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    detail = exc.details() if hasattr(exc, "details") else ""
    violations, info = _details(exc)
    if code == grpc.StatusCode.FAILED_PRECONDITION and ACCOUNT_DELETED in (detail, info.get("reason", "").lower()):
        return Problem(410, "this account is deleted or being deleted; follow links.status for its progress",
                       links={"status": DELETION_STATUS_PATH})
    if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS):
        return Problem(500, "an unexpected error occurred")  # a service failed on this request: our bug
    status = _GRPC_TO_HTTP.get(code, 502)
    if status in (502, 503, 504):
        return Problem(status, "a service is temporarily unavailable; try again shortly")
    extra: dict[str, Any] = {}
    if violations:
        extra["errors"] = violations
    if "existing_id" in info:
        extra["existing_id"] = info["existing_id"]
    return Problem(status, detail or "", **extra)


def rpc(method: Callable[..., Any], request: Any, timeout: float | None = None, user: str | None = None) -> Any:
    """Call a gRPC method for the signed-in user (or ``user``): every call of the gateway goes through here.

    Failures are raised as ``grpc.RpcError``; :func:`call` maps them to problem documents.
    """
    return method(request, metadata=clients().metadata(user if user is not None else user_id()),
                  timeout=timeout or settings().rpc_timeout_s)


def call(method: Callable[..., Any], request: Any, timeout: float | None = None, user: str | None = None) -> Any:
    """:func:`rpc`, answering a failure with its problem document."""
    try:
        return rpc(method, request, timeout, user)
    except grpc.RpcError as exc:
        raise rpc_problem(exc) from None


class RateLimiter:
    """Per-process token buckets keyed by (user, route): a guard for the expensive routes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    def allow(self, key: tuple[str, str], per_minute: int, burst: int) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(burst), now))
            tokens = min(float(burst), tokens + (now - last) * per_minute / 60.0)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                return False
            self._buckets[key] = (tokens - 1, now)
            if len(self._buckets) > 100_000:
                self._buckets.clear()
            return True


_limiter = RateLimiter()


def rate_limited(per_minute: int, burst: int | None = None) -> Callable[[F], F]:
    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not _limiter.allow((user_id(), view.__name__), per_minute, burst or per_minute):
                raise Problem(429, "too many requests; slow down", retry_after=60)
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
