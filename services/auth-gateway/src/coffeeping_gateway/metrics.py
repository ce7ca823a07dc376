"""RED metrics of the gateway's HTTP routes: requests by route template, method and status, and their
duration. Observed in the app's ``after_request`` (``app._serve``), for the API and the console alike.

The route is Flask's rule (``/v1/sequences/<sequence_id>``, never the path a client sent), ``unmatched``
for an address no route has; the method is one of the few HTTP methods or ``other``. Under gunicorn
the series live in prometheus_client's multiprocess files, and the master serves all workers' at once
(``coffeeping_gateway.multiprocess``).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

REQUESTS = Counter("coffeeping_http_requests", "HTTP requests answered by the gateway, by route template, "
                   "method and status code", ["route", "method", "status"])
DURATION = Histogram("coffeeping_http_request_duration_seconds",
                     "Time the gateway took to answer, by route template and method", ["route", "method"])

UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_durations: dict[tuple[str, str], Any] = {}
_requests: dict[tuple[str, str, int], Any] = {}


def observe(route: str, method: str, status: int, seconds: float) -> None:
    """Count one answered request (``route``: the matched rule, or ``UNMATCHED``)."""
    method = method if method in _METHODS else "other"
    duration = _durations.get((route, method))
    if duration is None:
        duration = _durations[(route, method)] = DURATION.labels(route, method)
    duration.observe(seconds)
    counted = _requests.get((route, method, status))
    if counted is None:
        counted = _requests[(route, method, status)] = REQUESTS.labels(route, method, str(status))
    counted.inc()


__all__ = ["DURATION", "REQUESTS", "UNMATCHED", "observe"]
