"""RED metrics of every gRPC method a backend serves: calls by method and status code, and their duration.

``rpc.AuthInterceptor`` reports each call it wraps to its method's ``MethodMetrics`` (``rpc.serve`` gives
it ``method_metrics``), so refusals are counted with their codes too. The method label is the full method
name (``/coffeeping.vault.v1.TokenVault/GetAccessToken``) of a method the server implements: a call to
an unknown method never reaches the interceptor's wrapper, so a client cannot invent label values.
"""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import Counter, Histogram

REQUESTS = Counter("coffeeping_grpc_server_requests", "gRPC calls served, by method and status code",
                   ["method", "code"])
DURATION = Histogram("coffeeping_grpc_server_request_duration_seconds",
                     "Time from a gRPC call's arrival to its last response message, by method", ["method"])


class MethodMetrics:
    """One method's series, looked up once."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.duration = DURATION.labels(method)
        self.codes: dict[str, Any] = {}

    def observe(self, code: str, seconds: float) -> None:
        self.duration.observe(seconds)
        child = self.codes.get(code)
        if child is None:
            child = self.codes[code] = REQUESTS.labels(self.method, code)
        child.inc()


@functools.cache
def method_metrics(method: str) -> MethodMetrics:
    """The method's series (two threads may build them at once: ``labels`` gives both the same children)."""
    return MethodMetrics(method)


__all__ = ["DURATION", "REQUESTS", "MethodMetrics", "method_metrics"]
