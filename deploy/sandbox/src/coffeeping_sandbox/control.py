"""Shared observation and fault injection for every stand-in.

Each stand-in calls ``Control.enter(method, ...)`` at the start of a request. It records the request,
applies injected latency, and raises ``InjectedFault`` when a fault is armed for that method. The
control HTTP API (``/_sandbox/...``) drives it; tests may also drive it in process.

Method names are dotted: ``gmail.messages.send``, ``gmail.threads.get``, ``oauth.token``,
``oauth.revoke``, ``oauth.userinfo``, ``kms.Encrypt``, ``kms.Decrypt``, ``clerk.jwks``.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any


@dataclass
class InjectedFault(Exception):
    """An armed fault fired: ``status`` is the HTTP status (429, 500, 503) or ``hang``."""

    method: str
    status: int | str
    hang_seconds: float = 0.0


@dataclass
class _Fault:
    status: int | str
    remaining: int
    hang_seconds: float = 30.0


@dataclass
class Control:
    latency_s: float = 0.0
    log_limit: int = 100_000
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _faults: dict[str, list[_Fault]] = field(default_factory=lambda: defaultdict(list))
    _log: list[dict[str, Any]] = field(default_factory=list)
    _method_latency: dict[str, float] = field(default_factory=dict)

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self._log.clear()
            self._method_latency.clear()
            self.latency_s = 0.0

    def set_latency(self, seconds: float, method: str | None = None) -> None:
        with self._lock:
            if method is None:
                self.latency_s = seconds
            else:
                self._method_latency[method] = seconds

    def arm(self, method: str, status: int | str, count: int = 1, hang_seconds: float = 30.0) -> None:
        """Make the next ``count`` calls of ``method`` fail with ``status`` (or hang)."""
        with self._lock:
            self._faults[method].append(_Fault(status, count, hang_seconds))

    def clear_faults(self, method: str | None = None) -> None:
        """Disarm every pending fault (or only those of ``method``)."""
        with self._lock:
            if method is None:
                self._faults.clear()
            else:
                self._faults.pop(method, None)

    def enter(self, method: str, **details: Any) -> None:
        """Record a call, wait the injected latency, and fire an armed fault if any."""
        entry = {"t": time.time(), "method": method, **details}
        fault: _Fault | None = None
        with self._lock:
            if len(self._log) < self.log_limit:
                self._log.append(entry)
            delay = self._method_latency.get(method, self.latency_s)
            queue = self._faults.get(method)
            if queue:
                fault = queue[0]
                fault.remaining -= 1
                if fault.remaining <= 0:
                    queue.pop(0)
        if delay:
            time.sleep(delay)
        if fault is not None:
            entry["fault"] = fault.status
            if fault.status == "hang":
                time.sleep(fault.hang_seconds)
            raise InjectedFault(method, fault.status, fault.hang_seconds)

    def log(self, method_prefix: str = "") -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._log if e["method"].startswith(method_prefix)]

    def count(self, method: str) -> int:
        with self._lock:
            return sum(1 for e in self._log if e["method"] == method)
