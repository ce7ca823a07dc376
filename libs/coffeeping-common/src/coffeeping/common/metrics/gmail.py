"""Gmail requests by method and status class, their quota units, and 429s by method.

``GmailRequests`` is a ``RecordingHttp`` sink: ``GmailClients`` sends every user's Gmail requests
through a ``RecordingHttp`` whose sink is one of these, handing each request on to the access log when
recording is on (``GMAIL_ACCESS_LOG``) and counting it either way. Only the verb and the path are read
(``calls.method_of``, a few microseconds), never a query, a body or an answer.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

from coffeeping.common.access_log.calls import QUOTA_UNITS, method_of
from coffeeping.common.access_log.recording import Sent, Sink

REQUESTS = Counter("coffeeping_gmail_requests", "Gmail API requests sent, by method (users.messages.send, ...) "
                   "and status class (2xx, 4xx, 5xx, ...; error: no answer)", ["method", "status_class"])
QUOTA_UNITS_USED = Counter("coffeeping_gmail_quota_units", "Gmail quota units of the requests sent, by method",
                           ["method"])
RATE_LIMITED = Counter("coffeeping_gmail_rate_limited", "Gmail answers 429 (rate limited), by method", ["method"])


def status_class(status: int | None) -> str:
    return "error" if status is None else f"{status // 100}xx"


class GmailRequests:
    """Counts each request, then hands it to ``then`` (the access log), if any."""

    def __init__(self, then: Sink | None = None) -> None:
        self.then = then
        self._requests: dict[tuple[str, str], Any] = {}
        self._units: dict[str, tuple[Any, Any, int]] = {}

    def sent(self, request: Sent) -> None:
        method = method_of(request.verb, request.uri)
        cls = status_class(request.status)
        counted = self._requests.get((method, cls))
        if counted is None:
            counted = self._requests[(method, cls)] = REQUESTS.labels(method, cls)
        counted.inc()
        per_method = self._units.get(method)
        if per_method is None:
            per_method = self._units[method] = (QUOTA_UNITS_USED.labels(method), RATE_LIMITED.labels(method),
                                                QUOTA_UNITS.get(method, 0))
        units, limited, cost = per_method
        if cost:
            units.inc(cost)
        if request.status == 429:
            limited.inc()
        if self.then is not None:
            self.then.sent(request)


__all__ = ["QUOTA_UNITS_USED", "RATE_LIMITED", "REQUESTS", "GmailRequests", "status_class"]
