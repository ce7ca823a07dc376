"""The gateway's ``/metrics``: prometheus_client's multiprocess mode under gunicorn.

Each worker process writes its series to files in ``PROMETHEUS_MULTIPROC_DIR``; gunicorn's master
serves them all, merged, on ``METRICS_PORT`` (``serve``, from ``when_ready``), so one scrape shows
every worker; a worker that exits is marked dead (``worker_exited``, from ``child_exit``).

prometheus_client decides where values live when it is first imported, so ``prepare`` runs in the master
before anything imports it: it takes the operator's ``PROMETHEUS_MULTIPROC_DIR`` (emptied of the files
of an earlier run) or makes a private temporary directory, removed again by ``cleanup`` at exit. This
module imports prometheus_client only inside the functions that run after ``prepare``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

ENV = "PROMETHEUS_MULTIPROC_DIR"


class TooLate(RuntimeError):
    """prometheus_client was imported before the multiprocess directory was set."""


def prepare(environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` for the master and its workers; return the directory made here
    (None when the operator gave one)."""
    given = environ.get(ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):  # an earlier run's workers: their counts are not ours
            stale.unlink(missing_ok=True)
        return None
    if "prometheus_client" in sys.modules:
        raise TooLate("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set: the workers' "
                      "metrics would not reach /metrics")
    private = Path(tempfile.mkdtemp(prefix="coffeeping-gateway-metrics-"))
    environ[ENV] = str(private)
    return private


def serve(port: int) -> Any:
    """Serve every worker's series, merged, on ``port`` (in the master); return the HTTP server."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    server, _ = start_http_server(port, registry=registry)
    logging.getLogger("coffeeping_gateway").info("metrics served", extra={"port": port})
    return server


def worker_exited(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


def cleanup(private: Path | None) -> None:
    if private is not None:
        shutil.rmtree(private, ignore_errors=True)


__all__ = ["ENV", "TooLate", "cleanup", "prepare", "serve", "worker_exited"]
