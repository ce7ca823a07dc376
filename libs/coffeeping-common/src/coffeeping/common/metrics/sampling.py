"""Gauges read from a database or the broker by a thread of their own, every ``every_s``.

A scrape only reads the last values: it never waits on a slow or absent database or broker. A source
whose last good reading is older than three rounds reports its families without samples (the series
disappear rather than show stale values) and ``coffeeping_metrics_sample_errors_total`` counts its
failures. Each source runs on its own daemon thread, so a hung broker never delays the database's
readings. ``SAMPLER`` is registered with the default registry; its threads start with ``start`` (once
the process serves metrics), and a source added later starts at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY, Counter
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, Select, func, select

from coffeeping.common.db import system_tx

log = logging.getLogger("coffeeping.metrics")
_WARN_AFTER = 4  # failures in a row (about 7 s at start-up) before a warning

SAMPLE_ERRORS = Counter("coffeeping_metrics_sample_errors", "Failed readings of a sampled gauge's source "
                        "(its database or broker did not answer in time)", ["sample"])


@dataclass(frozen=True)
class Family:
    """A sampled gauge: its name, help text and label names."""

    name: str
    documentation: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Reading:
    """One value of a family: ``labels`` in the order the family names them."""

    family: str
    value: float
    labels: tuple[str, ...] = ()


Read = Callable[[], Iterable[Reading]]

# ``SET LOCAL statement_timeout``: a reading never holds a pooled connection for long.
_SHORT_STATEMENTS = select(func.set_config("statement_timeout", "2000", True))


@contextmanager
def reading_tx(engine: Engine) -> Iterator[Connection]:
    """A system transaction for a reading, whose statements give up after 2 s."""
    with system_tx(engine) as conn:
        conn.execute(_SHORT_STATEMENTS)
        yield conn


def watch_rows(source: str, engine: Engine, families: tuple[Family, Family], column: Any, *where: Any) -> None:
    """Sample, as ``families`` (a count, an age in seconds), how many rows of ``column``'s table match
    ``where`` and how old the oldest ``column`` among them is."""
    query = count_and_oldest(column, *where)
    count_family, age_family = families

    def read() -> Iterator[Reading]:
        with reading_tx(engine) as conn:
            count, age = conn.execute(query).one()
        yield Reading(count_family.name, float(count))
        yield Reading(age_family.name, max(0.0, float(age)))

    SAMPLER.add(source, families, read)


def count_and_oldest(column: Any, *where: Any) -> Select[int, Any]:
    """How many rows of ``column``'s table match ``where``, and the age in seconds of the oldest ``column``
    among them (0 when there is none)."""
    age = func.coalesce(func.extract("epoch", func.now() - func.min(column)), 0)
    return select(func.count(), age).where(*where)



@dataclass
class Source:
    name: str
    families: tuple[Family, ...]
    read: Read
    readings: list[Reading] = field(default_factory=list)
    read_at: float = float("-inf")  # monotonic time of the last good reading
    failures: int = 0  # in a row


class Sampler(Collector):
    def __init__(self, every_s: float = 15.0) -> None:
        self.every_s = every_s
        self._lock = threading.Lock()
        self._sources: dict[str, Source] = {}
        self._stop: threading.Event | None = None

    def add(self, name: str, families: Sequence[Family], read: Read) -> None:
        """Sample ``read`` under ``name`` (a later ``add`` of the same name replaces it)."""
        source = Source(name, tuple(families), read)
        with self._lock:
            self._sources[name] = source
            running = self._stop is not None
        if running:
            self._start(source)

    def start(self, every_s: float | None = None) -> None:
        """Start sampling every source (once; later calls do nothing)."""
        with self._lock:
            if self._stop is not None:
                return
            self.every_s = every_s or self.every_s
            self._stop = threading.Event()
            sources = list(self._sources.values())
        for source in sources:
            self._start(source)

    def _start(self, source: Source) -> None:
        threading.Thread(target=self._run, args=(source,), name=f"metrics-{source.name}", daemon=True).start()

    def _run(self, source: Source) -> None:
        stop = self._stop
        assert stop is not None
        while True:
            with self._lock:
                if self._sources.get(source.name) is not source:
                    return  # replaced
            self.sample(source)
            # After a failure (a queue not declared yet at start-up, an outage), try again sooner.
            failures = source.failures
            if stop.wait(min(self.every_s, 0.5 * 2 ** failures) if failures else self.every_s):
                return

    def sample(self, source: Source) -> None:
        try:
            readings = list(source.read())
        except Exception as exc:  # noqa: BLE001 - the source is away: its series go stale, the scrape goes on
            SAMPLE_ERRORS.labels(source.name).inc()
            source.failures += 1
            # Once per outage, and not for the first rounds at start-up (a queue not declared yet).
            if source.failures == _WARN_AFTER:
                log.warning("metrics sample failing", extra={"sample": source.name, "error": type(exc).__name__})
            return
        if source.failures >= _WARN_AFTER:
            log.info("metrics sample recovered", extra={"sample": source.name})
        with self._lock:
            source.readings, source.read_at, source.failures = readings, time.monotonic(), 0

    def sample_now(self) -> None:
        """Read every source once, in the calling thread (tests)."""
        with self._lock:
            sources = list(self._sources.values())
        for source in sources:
            self.sample(source)

    def describe(self) -> Iterator[Metric]:
        with self._lock:
            families = [family for source in self._sources.values() for family in source.families]
        for family in families:
            yield GaugeMetricFamily(family.name, family.documentation, labels=family.labels)

    def collect(self) -> Iterator[Metric]:
        now = time.monotonic()
        with self._lock:
            sources = list(self._sources.values())
        for source in sources:
            fresh = now - source.read_at <= 3 * self.every_s
            for family in source.families:
                metric = GaugeMetricFamily(family.name, family.documentation, labels=family.labels)
                for reading in source.readings if fresh else ():
                    if reading.family == family.name:
                        metric.add_metric(list(reading.labels), reading.value)
                yield metric


SAMPLER = Sampler()
REGISTRY.register(SAMPLER)

__all__ = ["Family", "Reading", "SAMPLER", "SAMPLE_ERRORS", "Sampler"]
