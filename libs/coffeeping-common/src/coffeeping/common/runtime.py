"""The shape every service's entry point shares: settings, logging, a gRPC server, background
workers, Prometheus metrics on ``METRICS_PORT``, and an orderly drain on SIGTERM (health NOT_SERVING,
``server.stop(grace)``, then the workers finish their current item)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from sqlalchemy import Engine, literal, select

from coffeeping.common.config import ConfigError, amqp_url, db_url, integer, number, setting
from coffeeping.common.messaging import Consumer, OutboxRelay, consumed_by, dead_letter_janitor
from coffeeping.common.messaging.consumer import Handler
from coffeeping.common.metrics import MetricsSettings
from coffeeping.common.metrics.messaging import watch_outbox, watch_queues
from coffeeping.common.metrics.server import report_health, serve_metrics
from coffeeping.common.rpc import RunningServer, TlsSettings, shutdown_event
from coffeeping.common.tombstones import TombstoneSettings

log = logging.getLogger(__name__)

Worker = Callable[[threading.Event], None]


@dataclass(frozen=True)
class ServiceSettings(TlsSettings, TombstoneSettings, MetricsSettings):
    database_url: str = setting("DATABASE_URL", db_url)
    rabbitmq_url: str = setting("RABBITMQ_URL", amqp_url, default="amqp://guest:guest@127.0.0.1:5672//")
    messaging_prefix: str = setting("MESSAGING_PREFIX", default="coffeeping")
    grpc_port: int = setting("GRPC_PORT", integer(0, 65535))
    log_level: str = setting("LOG_LEVEL", default="INFO")
    shutdown_grace_s: int = setting("SHUTDOWN_GRACE_S", integer(0, 300), default=10)
    # How often each service drops deleted accounts' messages from its dead-letter queue.
    dead_letter_sweep_s: float = setting("DEAD_LETTER_SWEEP_S", number(0.5), default=60.0)
    # How often readiness (the database answers, the broker connection is held) and liveness (every
    # worker thread runs) are checked and reported through gRPC health.
    health_check_s: float = setting("HEALTH_CHECK_S", number(0.1), default=5.0)

    def __post_init__(self) -> None:
        if self.metrics_port and self.metrics_port == self.grpc_port:
            raise ConfigError("METRICS_PORT must differ from GRPC_PORT: metrics are never served on the service's port")


@dataclass
class Messaging:
    """The messaging workers of a backend (iterate for ``(name, worker)``), and its readiness."""

    workers: list[tuple[str, Worker]]
    consumer: Consumer
    engine: Engine

    def __iter__(self) -> Iterator[tuple[str, Worker]]:
        return iter(self.workers)

    def unready(self) -> str | None:
        """Why the service cannot do its work now (its database or its broker connection), or None."""
        if not self.consumer.connected.is_set():
            return "broker"
        return database_unready(self.engine)


def database_unready(engine: Engine) -> str | None:
    """"database" when ``engine``'s database does not answer a ping through its pool, else None."""
    try:
        with engine.connect() as conn:
            conn.execute(_PING)
    except Exception:  # noqa: BLE001 - any failure to reach it means "not ready"
        return "database"
    return None


_PING = select(literal(1))


def relay_worker(settings: ServiceSettings, engine: Engine, schema: str, poll_s: float = 0.2) -> tuple[str, Worker]:
    """The outbox relay of ``schema``: it wakes on each commit's notification, and ``poll_s`` is how often
    it also looks for rows on its own (its only pace while it cannot LISTEN)."""
    relay = OutboxRelay(engine, schema, settings.rabbitmq_url, settings.messaging_prefix)

    def run(stop: threading.Event) -> None:
        relay.run_forever(stop, interval=poll_s)

    return "outbox-relay", run


def start_metrics(settings: ServiceSettings, engine: Engine, schema: str, service: str | None = None) -> None:
    """With ``METRICS_PORT`` set, serve ``/metrics`` from here on, with the outbox's backlog and, given the
    ``service`` whose queues they are, its queues' depths (``coffeeping.common.metrics``)."""
    if not settings.metrics_port:
        return
    watch_outbox(engine, schema)
    if service is not None:
        watch_queues(settings.rabbitmq_url, settings.messaging_prefix, service)
    serve_metrics(settings.metrics_port)


def messaging_workers(settings: ServiceSettings, service: str, engine: Engine, schema: str,
                      handler: Handler, relay_poll_s: float = 0.2) -> Messaging:
    """The messaging workers every backend runs: its outbox relay (``relay_worker``), its consumer of the
    events the registry says it consumes (acting only on their registered producers' messages, dropping
    buried users' events) and the janitor that keeps its dead-letter queue free of buried users; and its
    metrics (``start_metrics``)."""
    start_metrics(settings, engine, schema, service)
    consumer = Consumer(settings.rabbitmq_url, settings.messaging_prefix, service, consumed_by(service), engine,
                        schema, handler, tombstone_key=settings.tombstone_key)
    janitor = dead_letter_janitor(settings.rabbitmq_url, settings.messaging_prefix, service, engine, schema,
                                  settings.tombstone_key, settings.dead_letter_sweep_s)
    return Messaging([relay_worker(settings, engine, schema, relay_poll_s), ("consumer", consumer.run),
                      ("dead-letter-janitor", janitor)], consumer, engine)


def run_until_signalled(server: RunningServer, workers: Iterable[tuple[str, Worker]] = (),
                        unready: Callable[[], str | None] | None = None, check_every_s: float = 5.0) -> None:
    """Run ``workers`` in threads next to ``server`` until SIGTERM/SIGINT, then drain both. Meanwhile
    report health every ``check_every_s``: live while every worker runs, ready while also ``unready``
    finds nothing wrong."""
    done = shutdown_event()
    stop_workers = threading.Event()
    threads = []
    for name, worker in workers:
        thread = threading.Thread(target=_guarded(name, worker), args=(stop_workers,), name=name, daemon=True)
        thread.start()
        threads.append(thread)
    watch = threading.Thread(target=watch_health, args=(server, threads, unready, done, check_every_s),
                             name="health", daemon=True)
    watch.start()
    done.wait()
    server.stop()
    stop_workers.set()
    for thread in threads:
        thread.join(timeout=server.grace)
    log.info("stopped")


def watch_health(server: RunningServer, threads: list[threading.Thread], unready: Callable[[], str | None] | None,
                 stop: threading.Event, every_s: float) -> None:
    """Report liveness and readiness through ``server``'s health service until ``stop``; log each change."""
    before: tuple[bool, str | None] | None = None
    while True:
        dead = sorted(thread.name for thread in threads if not thread.is_alive())
        problem = unready() if unready is not None else None
        now = (not dead, problem)
        server.report(live=not dead, ready=not dead and problem is None)
        report_health(live=not dead, ready=not dead and problem is None)
        if now != before:
            level = logging.INFO if now == (True, None) else logging.WARNING
            log.log(level, "health", extra={"live": not dead, "ready": not dead and problem is None,
                                            "dead_workers": ",".join(dead), "unready": problem or ""})
            before = now
        if stop.wait(every_s):
            return


def _guarded(name: str, worker: Worker) -> Worker:
    def run(stop: threading.Event) -> None:
        try:
            worker(stop)
        except Exception:
            log.exception("worker crashed", extra={"worker": name})
            raise

    return run
