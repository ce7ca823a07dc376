"""A backend's ``/metrics``: prometheus_client's own HTTP server on ``METRICS_PORT``, started once per
process, with the default registry (process metrics included) and the sampled gauges; and the health
gauges that ``runtime.watch_health`` sets."""

from __future__ import annotations

import logging
import threading

from prometheus_client import REGISTRY, Gauge, start_http_server
from prometheus_client.registry import CollectorRegistry

from coffeeping.common.metrics.sampling import SAMPLER

log = logging.getLogger("coffeeping.metrics")

LIVE = Gauge("coffeeping_live", "1 while every worker thread of the process runs (gRPC health 'liveness')")
READY = Gauge("coffeeping_ready", "1 while the process is live and its own database and broker connection "
              "answer (gRPC health '')")

_started: set[int] = set()
_lock = threading.Lock()


class MetricsPortInUse(RuntimeError):
    pass


def serve_metrics(port: int, registry: CollectorRegistry = REGISTRY, sample_every_s: float = 15.0) -> bool:
    """Serve ``registry`` at ``http://0.0.0.0:<port>/metrics`` from a daemon thread and start the sampled
    gauges; False (and nothing done) when ``port`` is 0 or this process already serves it."""
    with _lock:
        if not port or port in _started:
            return False
        try:
            start_http_server(port, registry=registry)
        except OSError as exc:
            raise MetricsPortInUse(f"METRICS_PORT {port} cannot be bound ({exc.strerror or exc})") from None
        _started.add(port)
    SAMPLER.start(sample_every_s)
    log.info("metrics served", extra={"port": port})
    return True


def report_health(live: bool, ready: bool) -> None:
    LIVE.set(1 if live else 0)
    READY.set(1 if ready else 0)


__all__ = ["LIVE", "READY", "MetricsPortInUse", "report_health", "serve_metrics"]
