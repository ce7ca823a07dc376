"""Entry point: validates the settings, then serves the app with gunicorn (``coffeeping-gateway``), and with
``METRICS_PORT`` set, every worker's metrics from the master (``multiprocess``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from coffeeping.common.config import load_or_exit
from coffeeping.common.logging import configure_logging
from coffeeping_gateway import SERVICE, multiprocess
from coffeeping_gateway.config import Settings


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, metrics_dir: Path | None = None) -> None:
        self.settings = settings
        self.metrics_dir = metrics_dir  # a private multiprocess directory, removed at exit
        self.metrics_server: Any = None
        super().__init__()

    def load_config(self) -> None:
        self.cfg.set("bind", f"0.0.0.0:{self.settings.port}")
        self.cfg.set("workers", self.settings.workers)
        self.cfg.set("worker_class", "gthread")
        self.cfg.set("threads", self.settings.threads)
        self.cfg.set("graceful_timeout", 20)
        self.cfg.set("timeout", 120)
        self.cfg.set("accesslog", None)
        # gunicorn's own lines in the same one-JSON-object-per-line shape as ours.
        self.cfg.set("logconfig_dict", {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"json": {"()": "coffeeping.common.logging.JsonFormatter", "service": SERVICE}},
            "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json",
                                     "stream": "ext://sys.stdout"}},
            "loggers": {
                "gunicorn.error": {"handlers": ["console"], "level": "INFO", "propagate": False},
                "gunicorn.access": {"handlers": [], "propagate": False},
            },
            "root": {"handlers": ["console"], "level": self.settings.log_level.upper()},
        })
        # Room for an oversized token to reach the app and get its 401 (problem+json) rather than
        # gunicorn's bare 431; anything larger still gets gunicorn's 431, never a 500.
        self.cfg.set("limit_request_field_size", 16384)
        # The app (and its gRPC channels) is built in each worker after the fork.
        self.cfg.set("preload_app", False)
        self.cfg.set("post_fork", self._post_fork)
        if self.settings.metrics_port:
            self.cfg.set("when_ready", self._serve_metrics)
            self.cfg.set("child_exit", lambda server, worker: multiprocess.worker_exited(worker.pid))
            self.cfg.set("on_exit", lambda server: multiprocess.cleanup(self.metrics_dir))

    def _serve_metrics(self, server: Any) -> None:
        self.metrics_server = multiprocess.serve(self.settings.metrics_port)

    def _post_fork(self, server: Any, worker: Any) -> None:
        if self.metrics_server is not None:
            # The worker's copy of the master's metrics socket: only the master answers on it.
            self.metrics_server.socket.close()
        configure_logging(SERVICE, self.settings.log_level)

    def load(self) -> Any:
        from coffeeping_gateway.app import create_app

        configure_logging(SERVICE, self.settings.log_level)
        return create_app(self.settings)


def main() -> None:
    settings = load_or_exit(Settings)
    configure_logging(SERVICE, settings.log_level)
    metrics_dir = multiprocess.prepare() if settings.metrics_port else None
    _Gunicorn(settings, metrics_dir).run()


if __name__ == "__main__":
    main()
