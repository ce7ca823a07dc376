"""The Gmail stand-in in a process of its own, served with HTTP keep-alive, for the mailer benchmarks.

The benchmark seeds the sandbox in its own process (directly, fast), then ``GmailProcess.start`` forks:
the child serves the already-seeded sandbox's Google app with gunicorn (one gthread worker, so the
state stays in one process; keep-alive, as Google's front ends keep connections open). Afterwards the
benchmark's copy of the sandbox is stale: read the served state through the control API
(``mailbox``, ``quota``). So the stand-in's MIME parsing no longer competes with the vault double for
the benchmark's GIL, and the mailers are not charged for a TCP connection per Gmail call (the
development server closes every connection).

Only tokens the sandbox issued before the fork are known to the child: the vault double must hand
out tokens minted during the setup (their lifetime is an hour, longer than any run).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from typing import Any

import requests
from mailer_harness import free_port


def _serve(app: Any, port: int, threads: int) -> None:
    from gunicorn.app.base import BaseApplication

    class StandIn(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in {"bind": f"127.0.0.1:{port}", "workers": 1, "worker_class": "gthread",
                               "threads": threads, "keepalive": 75, "timeout": 600, "loglevel": "warning",
                               "accesslog": None}.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    StandIn().run()


class GmailProcess:
    def __init__(self, sandbox: Any, threads: int = 128) -> None:
        self.sandbox = sandbox
        self.threads = threads
        self.port = free_port()
        self.process: mp.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GmailProcess:
        from coffeeping_sandbox.server import google_app

        app = google_app(self.sandbox)
        self.process = mp.get_context("fork").Process(target=_serve, args=(app, self.port, self.threads),
                                                      daemon=True)
        self.process.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{self.url}/_sandbox/gmail/quota", params={"user": "probe@example.com"}, timeout=2)
                return self
            except requests.ConnectionError:
                if time.monotonic() > deadline or not self.process.is_alive():
                    raise RuntimeError("the Gmail stand-in process did not start") from None
                time.sleep(0.1)

    @property
    def pid(self) -> int:
        """The gunicorn master (its worker is its child: count the tree)."""
        assert self.process is not None and self.process.pid is not None
        return self.process.pid

    def set_latency(self, ms: float) -> None:
        requests.post(f"{self.url}/_sandbox/latency", json={"ms": ms}, timeout=10).raise_for_status()

    def _get(self, path: str, user: str) -> dict[str, Any]:
        reply = requests.get(f"{self.url}/_sandbox/gmail/{path}", params={"user": user}, timeout=30)
        reply.raise_for_status()
        result: dict[str, Any] = reply.json()
        return result

    def mailbox(self, user: str) -> dict[str, Any]:
        return self._get("mailbox", user)

    def quota(self, user: str) -> dict[str, Any]:
        return self._get("quota", user)

    def stop(self) -> None:
        if self.process is not None and self.process.is_alive():
            os.kill(self.process.pid or 0, signal.SIGTERM)
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()
