"""Records written in batches by a background thread: the vault's token-issue records and the services'
Gmail access logs.

Callers append to an in-memory queue and never wait for the database; a writer thread hands the queue
to ``write`` (one transaction, ideally one statement) every ``interval_s`` and once more at shutdown,
after the gRPC server has drained. A failed write puts the batch back, in order, for the next attempt;
a queue over ``max_pending`` drops its oldest records. Both are counted (``failures``, ``dropped``) and
logged, never raised to the caller whose work produced the record.

What a hard crash (SIGKILL, OOM, power loss) can lose is the last unflushed batch: at most about
``interval_s`` of records.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class BatchWriter(Generic[T]):
    def __init__(self, write: Callable[[list[T]], None], name: str, interval_s: float = 0.1,
                 max_pending: int = 1_000_000) -> None:
        self.write = write
        self.name = name
        self.interval_s = interval_s
        self.max_pending = max_pending
        self.dropped = 0  # records lost to a full queue
        self.failures = 0  # writes that failed (their records were queued again)
        self.running = False  # a writer thread is flushing (``run``)
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: list[T] = []

    def add(self, record: T) -> None:
        with self._lock:
            if len(self._pending) >= self.max_pending:
                self._pending.pop(0)
                self.dropped += 1
            self._pending.append(record)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush(self) -> int:
        """Write what is queued; on failure put it back (in order) for the next attempt and raise."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch:
                return 0
            try:
                self.write(batch)
            except Exception as exc:
                with self._lock:
                    self._pending[:0] = batch
                    overflow = len(self._pending) - self.max_pending
                    if overflow > 0:
                        del self._pending[:overflow]
                        self.dropped += overflow
                    self.failures += 1
                log.warning("record batch not written; will retry", extra={
                    "writer": self.name, "records": len(batch), "error": type(exc).__name__,
                    "failures": self.failures, "dropped": self.dropped})
                raise
            return len(batch)

    def run(self, stop: threading.Event, housekeeping: Callable[[], object] | None = None,
            housekeeping_every_s: float = 3600.0) -> None:
        """Flush every ``interval_s`` until ``stop``, then once more (the server has drained by then).

        ``housekeeping`` (a retention sweep, say) runs after the first flush and then every
        ``housekeeping_every_s``; its failures are logged and never stop the writer.
        """
        self.running = True
        swept_at: float | None = None
        try:
            while not stop.wait(self.interval_s):
                try:
                    self.flush()
                except Exception:  # noqa: BLE001 - logged in flush; the records stay queued
                    stop.wait(1.0)
                if housekeeping is not None and (swept_at is None
                                                 or time.monotonic() - swept_at >= housekeeping_every_s):
                    swept_at = time.monotonic()
                    try:
                        housekeeping()
                    except Exception as exc:  # noqa: BLE001 - housekeeping must never stop the writer
                        log.warning("writer housekeeping failed", extra={"writer": self.name,
                                                                         "error": type(exc).__name__})
        finally:
            self.running = False
            for _attempt in range(3):
                with contextlib.suppress(Exception):  # logged in flush
                    self.flush()
                if not self.pending():
                    break
            if self.pending():
                log.error("records lost at shutdown", extra={"writer": self.name, "records": self.pending()})


__all__ = ["BatchWriter"]
