"""Prometheus metrics (``prometheus-client``), served on ``METRICS_PORT``, a port of their own that is never
a service's public one (docs/OBSERVABILITY.md lists every series).

- ``server``: ``serve_metrics`` (a backend's ``/metrics``, started once by ``runtime.start_metrics``),
  the health gauges.
- ``rpc``: RED metrics of every gRPC method a backend serves (reported by ``rpc.AuthInterceptor``).
- ``messaging``: the outbox's backlog, the service's queue and dead-letter queue depths, the age of the
  events consumed.
- ``gmail``: every Gmail request's method, status class and quota units (a ``RecordingHttp`` sink).
- ``sampling``: gauges read from a database or the broker by a thread of their own, so that a scrape never
  waits on either.

Label values never carry user data: route templates, RPC and Gmail method names, status codes, fixed
enums. Importing this package does not import ``prometheus_client``: the gateway's settings include
``MetricsSettings`` in gunicorn's master, which must set ``PROMETHEUS_MULTIPROC_DIR`` before
``prometheus_client`` is first imported (``coffeeping_gateway.multiprocess``).
"""

from __future__ import annotations

from dataclasses import dataclass

from coffeeping.common.config import integer, setting


@dataclass(frozen=True)
class MetricsSettings:
    # The port each process serves Prometheus metrics on (/metrics), never the public one; 0: no metrics.
    # Kubernetes scrapes the container port named "metrics" (9090).
    metrics_port: int = setting("METRICS_PORT", integer(0, 65535), default=0)


__all__ = ["MetricsSettings"]
