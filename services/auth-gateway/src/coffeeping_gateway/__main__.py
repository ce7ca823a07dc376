"""Entry point: validates the settings, then serves the app with gunicorn (``coffeeping-gateway``)."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from coffeeping.common.config import load_or_exit
from coffeeping.common.logging import configure_logging
from coffeeping_gateway import SERVICE
from coffeeping_gateway.config import Settings


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
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
        self.cfg.set("post_fork", lambda server, worker: configure_logging(SERVICE, self.settings.log_level))

    def load(self) -> Any:
        from coffeeping_gateway.app import create_app

        configure_logging(SERVICE, self.settings.log_level)
        return create_app(self.settings)


def main() -> None:
    settings = load_or_exit(Settings)
    configure_logging(SERVICE, settings.log_level)
    _Gunicorn(settings).run()


if __name__ == "__main__":
    main()
